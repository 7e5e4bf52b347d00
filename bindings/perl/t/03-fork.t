use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use Test::More;
use POSIX ();
use TestLockfn;
use Lockfn;

for my $b (backends()) {
    subtest "backend $b" => sub {
        my $t = "$b:" . new_name();
        my $lock = Lockfn->acquire($t);
        my $token = $lock->token;
        pipe(my $r, my $w) or die "pipe: $!";
        my $pid = fork() // die "fork: $!";
        if (!$pid) {
            close $r;
            my @res;
            push @res, $lock->held ? 'held' : 'not-held';
            eval { $lock->update };
            push @res, ref($@) ? $@->code : 'ok';
            push @res, ref($@) && $@->message eq Lockfn::lock_last_error() ? 'lib-msg' : 'own-msg';
            my $other = eval { Lockfn->acquire($t, timeout => 0) };
            push @res, $other ? 'acquired' : $@->code;
            eval { $lock->release };
            push @res, ref($@) ? $@->code : 'ok';
            print $w join(',', @res), "\n";
            close $w;
            POSIX::_exit(0);    # no END blocks; the guard's DESTROY would not touch it anyway
        }
        close $w;
        my $line = <$r>;
        waitpid($pid, 0);
        chomp $line;
        is($line, join(',', 'not-held', Lockfn::LOCK_EFORKED, 'lib-msg', Lockfn::LOCK_BUSY, Lockfn::LOCK_EFORKED),
            'child: update/release are EFORKED, the lock is busy');
        ok($lock->held, 'parent still holds');
        is($lock->token, $token, 'same token');
        is_deeply([map { $_->{pid} } @{ Lockfn::status($t)->{holders} }], [$$], 'holder is the parent');
        ok($lock->update, 'parent update');

        # a child that lets the guard go out of scope normally leaves the parent's lock alone
        my $pid2 = fork() // die;
        if (!$pid2) { undef $lock; exit 0; }
        waitpid($pid2, 0);
        ok(Lockfn::status($t)->{held}, 'still held after the child exited');
        ok($lock->release, 'parent release');
        ok(!Lockfn::status($t)->{held}, 'free');
    };
}

done_testing;
