package TestLockfn;
# Shared setup for the Lockfn tests: the library of this checkout (unless LOCKFN_LIBRARY is
# set), a temporary pmxcfs root, unique lock names, and the backends to run against.
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Spec;
use File::Temp qw(tempdir);
use Test::More;
use Exporter 'import';
our @EXPORT = qw(backends new_name);

my $root = File::Spec->rel2abs(dirname(__FILE__) . '/../../../..');
if (!$ENV{LOCKFN_LIBRARY}) {
    for my $c ("$root/target/debug/liblockfn.so", "$root/target/release/liblockfn.so") {
        if (-e $c) { $ENV{LOCKFN_LIBRARY} = $c; last }
    }
}
# pmxcfs: a plain lock directory on tmpfs (inode numbers, the fencing tokens, are not reused
# at once there, as on pmxcfs), with the node-local flock and record directories beside it.
if (!$ENV{LOCKFN_PMXCFS_DIR}) {
    my $d = tempdir('lockfn-perl-pmxcfs-XXXXXX', DIR => (-d '/dev/shm' ? '/dev/shm' : '/tmp'), CLEANUP => 1);
    for ([LOCKFN_PMXCFS_DIR => 'lock'], [LOCKFN_PMXLOCK_DIR => 'pmxlock'], [LOCKFN_RUN_DIR => 'run']) {
        mkdir "$d/$_->[1]" or die "mkdir $d/$_->[1]: $!";
        $ENV{ $_->[0] } ||= "$d/$_->[1]";
    }
}

require Lockfn;

my $n = 0;
sub new_name { return sprintf('pl%d-%d', $$, $n++) }

my %server = (zk => 'ZKHOSTS', consul => 'CONSUL_HTTP_ADDR');

# The backends to test: sem and pmxcfs always, zk and consul when their server is given;
# a backend the library says is not implemented is reported (diag) and left out.
sub backends {
    my @out;
    for my $b (qw(sem pmxcfs zk consul)) {
        if (my $env = $server{$b}) {
            if (!$ENV{$env}) {
                BAIL_OUT("$env is not set but LOCKFN_TEST_REQUIRE_SERVERS=1")
                  if ($ENV{LOCKFN_TEST_REQUIRE_SERVERS} // '') eq '1';
                diag("skipping $b: $env not set");
                next;
            }
        }
        eval { Lockfn::status("$b:probe-$$") };
        if ($@ && "$@" =~ /not implemented/) {
            diag("skipping $b: the library says: $@");
            next;
        }
        push @out, $b;
    }
    return @out;
}

END {
    unlink glob("/dev/shm/sem.pl$$-*"), glob("/dev/shm/lockfn\@table.pl$$-*");
}

1;
