use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use Test::More;
use TestLockfn;
use Lockfn;

my $cli = $ENV{LOCKFN} || "$FindBin::Bin/../../../target/debug/lockfn";
plan skip_all => "no lockfn binary at $cli" if !-x $cli;

sub force_release { system($cli, 'release', '--force', $_[0]) == 0 or die "lockfn release --force failed\n" }

my $t = 'sem:' . new_name();
my $lock = Lockfn->acquire($t);
force_release($t);
ok(!eval { $lock->update }, 'update of a lost lock dies');
is($@->code, Lockfn::LOCK_ELOST, 'LOCK_ELOST');
like("$@", qr/\Q$t\E/, 'message names the target');
ok(!eval { $lock->release }, 'release of the lost lock dies too');
is($@->code, Lockfn::LOCK_ELOST, 'release: LOCK_ELOST');

# lock_with: a lock lost while $code ran is a failure even when $code succeeded
my $res = Lockfn::lock_with($t, 5, sub { force_release($t); 'done' });
ok(!defined $res, 'lock_with returns undef when the lock was lost');
like($@, qr/^cfs-lock '\Q${\ substr($t, 4)}\E' error: .*/, "lock_with: \$@ = $@");

done_testing;
