use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use Test::More;
use Time::HiRes qw(time);
use POSIX ();
use TestLockfn;
use Lockfn;

# Perl defers signal handlers while C code runs; with a handler installed, Lockfn waits in
# slices so that the handler runs promptly, and a handler that dies leaves nothing behind.
for my $b (backends()) {
    subtest "backend $b" => sub {
        my $t = "$b:" . new_name();
        my $holder = Lockfn->acquire($t);

        # run_with_timeout style: an alarm whose handler dies interrupts the wait
        my $t0 = time;
        my $got = eval {
            local $SIG{ALRM} = sub { die "got timeout\n" };
            Time::HiRes::alarm(0.5);
            my $l = Lockfn->acquire($t, timeout => 30);
            Time::HiRes::alarm(0);
            $l;
        };
        my $took = time - $t0;
        is($@, "got timeout\n", 'the ALRM handler ran and died during the wait');
        ok(!$got, 'no lock');
        ok($took < 1.5, sprintf('promptly (%.0f ms after the 500 ms alarm)', ($took - 0.5) * 1000));
        is_deeply([map { $_->{pid} } @{ Lockfn::status($t)->{holders} }], [$$], 'only the holder');

        # a handler that returns lets the wait go on
        my $seen = 0;
        {
            local $SIG{USR1} = sub { $seen++ };
            my $pid = fork() // die;
            if (!$pid) { Time::HiRes::sleep(0.3); kill 'USR1', getppid(); POSIX::_exit(0) }
            my $t1 = time;
            my $l = eval { Lockfn->acquire($t, timeout => 1) };
            my ($err, $last, $took) = ($@, Lockfn::lock_last_error(), time - $t1);
            is(ref($err) && $err->code, Lockfn::LOCK_BUSY, 'still busy after the handler ran');
            ok($took >= 0.95 && $took < 5, "waited the whole timeout ($took s)");
            is(ref($err) && $err->message, $last, "the library's message, unchanged: $err");
            # waited in slices: the message must not name a slice as the whole wait
            my ($said) = "$err" =~ /(?:timed out after|waited) ([0-9.]+) s/;
            ok(!defined($said) || $said >= 0.95, 'no slice length given as the wait');
            waitpid($pid, 0);
        }
        is($seen, 1, 'USR1 handler ran once');

        undef $holder;
        ok(!Lockfn::status($t)->{held}, 'nothing left behind');
        my $l = Lockfn->acquire($t, timeout => 0);
        ok($l->held, 'free for the next one');
    };
}

done_testing;
