use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use Test::More;
use Time::HiRes qw(time);
use TestLockfn;
use Lockfn;

# Lockfn::lock_with follows PVE::Cluster::cfs_lock: returns $code's result (with $@
# cleared), or undef with $@ set; always releases; suspends and restores an outer alarm.
for my $b (backends()) {
    subtest "backend $b" => sub {
        my $name = new_name();
        my $t = "$b:$name";

        $@ = 'stale';
        my $res = Lockfn::lock_with($t, 5, sub {
            my @p = @_;
            ok(Lockfn::status($t)->{held}, 'held while $code runs');
            return "got @p";
        }, 1, 2);
        is($res, 'got 1 2', 'returns what $code returns, with its @param');
        ok(!defined $@, '$@ cleared on success');
        ok(!Lockfn::status($t)->{held}, 'released after success');

        $res = Lockfn::lock_with($t, 5, sub { die "code failed\n" });
        ok(!defined $res, 'undef when $code dies');
        is($@, "code failed\n", '$code error passed through unchanged');
        ok(!Lockfn::status($t)->{held}, 'released after $code died');

        my $obj = bless {}, 'My::Exception';
        Lockfn::lock_with($t, 5, sub { die $obj });
        is($@, $obj, 'exception objects passed through');

        {
            my $holder = Lockfn->acquire($t);
            my $ran = 0;
            my $t0 = time;
            $res = Lockfn::lock_with($t, 0.5, sub { $ran = 1 });
            my $took = time - $t0;
            ok(!defined $res && !$ran, 'busy: $code not run');
            is($@, "cfs-lock '$name' error: got lock request timeout\n", 'cfs_lock timeout message');
            ok($took >= 0.4 && $took < 5, "waited the timeout ($took s)");
        }

        $res = Lockfn::lock_with('sem:../x', 1, sub { 1 });
        like($@, qr/^cfs-lock '\.\.\/x' error: invalid target .*\n\z/s, 'lock error message');

        # an outer alarm is suspended during lock_with and restored after
        my $fired = 0;
        local $SIG{ALRM} = sub { $fired++ };
        alarm(30);
        Lockfn::lock_with($t, 5, sub { is(alarm(0), 0, 'no alarm pending inside'); 1 });
        my $left = alarm(0);
        ok($left > 20 && $left <= 30, "outer alarm restored ($left s)");
        ok(!$fired, 'outer alarm did not fire');

        # nested locks of different names
        $res = Lockfn::lock_with("$t-a", 5, sub {
            return Lockfn::lock_with("$t-b", 5, sub { 'inner' });
        });
        is($res, 'inner', 'nested lock_with');
    };
}

done_testing;
