#!/usr/bin/perl
# Take a lock, show who holds it, release it:  perl hello_lock.pl sem:hello
# (or pmxcfs:hello on a Proxmox node, zk:hello, consul:hello)
use strict;
use warnings;
use Lockfn;

my $target = shift // 'sem:hello';
{
    my $lock = Lockfn->acquire($target, timeout => 10, holder => 'hello_lock.pl');
    print "locked $target token ", $lock->token, "\n";
    print Lockfn::status($target)->{holders}[0]{holder}, "\n";
}    # released when $lock goes out of scope
print "released $target\n";

# The Proxmox convention: returns what the code returns, or undef with $@ set.
my $res = Lockfn::lock_with($target, 10, sub { return "ran with @_" }, 'a', 'b');
die $@ if $@;
print "$res\n";
