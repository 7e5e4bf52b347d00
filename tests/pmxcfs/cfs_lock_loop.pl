#!/usr/bin/perl
# What Proxmox's PVE::Cluster cfs_lock does, in a loop: mkdir takes the lock; on failure an
# unlock request utime(0, 0) and a sleep; rmdir releases. (cfs_lock sleeps 1 s between tries;
# RETRY_SLEEP defaults to 0.05 s to keep the tests short.) Inside the lock it checks, with an
# O_EXCL marker file, that nobody else is inside.
#
#   cfs_lock_loop.pl LOCKDIR NAME ITERATIONS MARKDIR HOLD_SECONDS [RETRY_SLEEP]
# Prints "IN i" when inside, "DONE" at the end; violations go to MARKDIR/violations.
use strict;
use warnings;
use Time::HiRes qw(sleep);
use Fcntl qw(O_CREAT O_EXCL O_WRONLY);

$| = 1;
my ($lockdir, $name, $iters, $mark, $hold, $retry) = @ARGV;
die "usage: $0 LOCKDIR NAME ITERATIONS MARKDIR HOLD_SECONDS [RETRY_SLEEP]\n" unless defined $hold;
$retry //= 0.05;
my $path = "$lockdir/$name";

sub append {
    my ($file, $text) = @_;
    open(my $fh, '>>', $file) or die "open $file: $!";
    print $fh $text;
    close $fh;
}

for my $i (1 .. $iters) {
    my $tries = 0;
    until (mkdir $path) {
        die "mkdir $path: $!\n" unless $!{EEXIST};
        utime 0, 0, $path;    # cfs unlock request
        sleep $retry;
        die "gave up waiting for $path\n" if ++$tries > 1_000_000;
    }
    print "IN $i\n";
    if (sysopen(my $fh, "$mark/inside", O_CREAT | O_EXCL | O_WRONLY)) {
        close $fh;
    } else {
        append("$mark/violations", "perl $$ found someone inside\n");
    }
    sleep $hold if $hold > 0;
    unlink "$mark/inside";
    append("$mark/count", "perl $$\n");
    rmdir $path or die "rmdir $path: $!\n";
}
print "DONE\n";
