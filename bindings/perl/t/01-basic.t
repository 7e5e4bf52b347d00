use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use Test::More;
use Time::HiRes qw(time);
use TestLockfn;
use Lockfn;

like(Lockfn::version(), qr/^\d+\.\d+\.\d+/, 'version');

for my $b (backends()) {
    subtest "backend $b" => sub {
        my $t = "$b:" . new_name();
        my $lock = Lockfn->acquire($t, timeout => 5, holder => 'perl test');
        ok($lock->held, 'held');
        ok($lock->token > 0, 'token');
        is($lock->target, $t, 'target');
        my $st = Lockfn::status($t);
        ok($st->{held}, 'status: held');
        is_deeply([map { $_->{pid} } @{ $st->{holders} }], [$$], 'status: our pid');
        is($st->{holders}[0]{holder}, 'perl test', 'status: holder text');
        is($st->{holders}[0]{token}, $lock->token, 'status: token');

        my $t0 = time;
        my $busy = eval { Lockfn->acquire($t, timeout => 0.3) };
        my $err = $@;
        my $took = time - $t0;
        ok(!$busy, 'second acquire fails');
        isa_ok($err, 'Lockfn::Error');
        is($err->code, Lockfn::LOCK_BUSY, 'busy code');
        is($err->message, Lockfn::lock_last_error(), "busy: the library's message");
        like("$err", qr/\Q$t\E/, 'message names the target');
        ok($took >= 0.25 && $took < 5, "waited the timeout ($took s)");

        ok(!eval { Lockfn->acquire($t, timeout => 0) }, 'try once fails');
        is($@->code, Lockfn::LOCK_BUSY, 'try once: busy');

        ok($lock->update, 'update');
        my $tok = $lock->token;
        ok($lock->release, 'release');
        ok(!$lock->held, 'not held after release');
        ok(!eval { $lock->release }, 'double release dies');
        is($@->code, Lockfn::LOCK_ENOTHELD, 'double release: not held');
        ok(!eval { $lock->update }, 'update after release dies');
        ok(!Lockfn::status($t)->{held}, 'free after release');

        {
            my $g = Lockfn->acquire($t, timeout => 0);
            ok($g->token > $tok, 'token grows');
        }
        ok(!Lockfn::status($t)->{held}, 'guard released at end of scope');

        if ($b eq 'pmxcfs') {    # pmxcfs locks are exclusive, as in Proxmox
            ok(!eval { Lockfn->acquire("$t-lim", limit => 2, timeout => 0) }, 'pmxcfs: no limit');
            is($@->code, Lockfn::LOCK_EINVAL, 'pmxcfs limit: EINVAL');
            return;
        }
        my @sem = map { Lockfn->acquire("$t-lim", limit => 2, timeout => 0) } 1 .. 2;
        is(scalar(@sem), 2, 'limit 2: two holders');
        ok(!eval { Lockfn->acquire("$t-lim", limit => 2, timeout => 0) }, 'limit 2: third busy');
        @sem = ();
        ok(Lockfn->acquire("$t-lim", limit => 2, timeout => 0), 'limit 2: free again');
    };
}

subtest 'errors' => sub {
    for my $bad ('sem:', 'sem:../x', 'sem:a/b', 'sem:' . ('x' x 201), 'pmxcfs:a/b', 'nosuch:x', '') {
        ok(!eval { Lockfn->acquire($bad, timeout => 0) }, "invalid '$bad' dies");
        is(ref($@) && $@->code, Lockfn::LOCK_EINVAL, "invalid '$bad': EINVAL");
        is(ref($@) && $@->message, Lockfn::lock_last_error(), "invalid '$bad': the library's message");
    }
    ok(!eval { Lockfn->acquire("sem:a\0b") }, 'NUL in target dies');
    is($@->code, Lockfn::LOCK_EINVAL, 'NUL: EINVAL');
    ok(!eval { Lockfn->acquire(undef) }, 'undef target dies');
    ok(!eval { Lockfn->acquire('sem:' . new_name(), bogus => 1) }, 'unknown option dies');
    like($@, qr/unknown option 'bogus'/, 'unknown option message');
    ok(!eval { Lockfn->acquire('sem:' . new_name(), limit => 0, timeout => 0) }, 'limit 0 dies');
    is($@->code, Lockfn::LOCK_EINVAL, 'limit 0: EINVAL');
    is($@->message, Lockfn::lock_last_error(), "limit 0: the library's message ($@)");
    ok(!eval { Lockfn::status('sem:../x') }, 'status of invalid target dies');
    ok(Lockfn::gc('sem') >= 0, 'gc returns a count');
};

subtest 'uncontended cycle time' => sub {
    my $t = 'sem:' . new_name();
    my $n = 2000;
    my $t0 = time;
    for (1 .. $n) { my $g = Lockfn->acquire($t); }
    my $per = (time - $t0) / $n;
    diag(sprintf('Perl uncontended acquire+release on sem: %.1f us', $per * 1e6));
    ok($per < 0.05, 'under 50 ms per cycle');
};

done_testing;
