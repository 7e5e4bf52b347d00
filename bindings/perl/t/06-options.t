use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use Test::More;
use TestLockfn;
use Lockfn;

# Issue 12: ttl => -5 became 4294967291; options that do not fit die with LOCK_EINVAL.
my $t = 'sem:' . new_name();
for my $case (
    [ttl => -5], [ttl => 1.5], [ttl => 'abc'], [ttl => 'nan'], [ttl => 9**9**9],
    [ttl => 4294967296], [limit => -1], [limit => 2.5], [limit => 0], [limit => 'x'],
    [limit => 4294967296], [timeout => -5], [timeout => 'nan'], [timeout => 'abc'],
    [timeout => -0.5], [timeout => ''],
) {
    my ($k, $v) = @$case;
    my $lock = eval { Lockfn->acquire($t, $k => $v) };
    my $err = $@;
    ok(!$lock, "$k => $v: refused");
    isa_ok($err, 'Lockfn::Error', "$k => $v: error");
    is(ref($err) && $err->code, Lockfn::LOCK_EINVAL(), "$k => $v: LOCK_EINVAL") or diag("$err");
}
# What is valid still works: whole numbers, fractions of seconds, -1 and inf (forever).
for my $case ([timeout => 0], [timeout => 0.25], [timeout => -1], [timeout => 'inf'],
              [timeout => 9**9**9], [ttl => '30'], [limit => 1]) {
    my ($k, $v) = @$case;
    my $lock = eval { Lockfn->acquire($t, $k => $v) };
    ok($lock && $lock->held, "$k => $v: acquired") or diag("$@");
    $lock->release if $lock;
}
done_testing;
