use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use Test::More;
use TestLockfn;
use Lockfn;

# Lockfn's copies of the C ABI (FFI::Platypus cannot read a header) against include/lockfn.h,
# its version against lock_version() and the soname against the built library.
my $header = "$FindBin::Bin/../../../include/lockfn.h";
open(my $fh, '<', $header) or die "$header: $!";
my $h = do { local $/; <$fh> };
close $fh;

my %defines = $h =~ /^#define (LOCK_\w+) (\d+)$/mg;
ok(keys(%defines) >= 14, 'lockfn.h defines the codes and flags') or diag(explain \%defines);
for my $name (sort keys %defines) {
    my $sub = Lockfn->can($name);
    ok($sub, "Lockfn has $name") or next;
    is($sub->(), $defines{$name}, "$name is lockfn.h's");
}
# and no constant that the header lacks
my @ours = grep { /^LOCK_[A-Z_]+$/ && Lockfn->can($_) } keys %Lockfn::;
is_deeply([sort @ours], [sort keys %defines], 'the same set of LOCK_* constants');

# struct lock_options: the same fields, in order, of the same types
my ($body) = $h =~ /typedef struct lock_options \{(.*?)\} lock_options;/s;
ok($body, 'lockfn.h has struct lock_options');
my %ctype = (uint32_t => 'uint32', double => 'double', 'const char*' => 'opaque', int => 'int',
    'uint64_t[4]' => 'uint64[4]');
my @want;
for my $line (split /\n/, $body) {
    $line =~ s/^\s+|\s+$//g;
    next if $line eq '' || $line =~ m{^//};
    my ($type, $name, $dim) = $line =~ /^(.+?)\s*\b(\w+)(\[\d+\])?;$/
      or BAIL_OUT("cannot read this field of lockfn.h: $line");
    $type =~ s/ \*/*/;
    $type .= $dim // '';
    ok(exists $ctype{$type}, "field $name: a C type this test knows ($type)");
    push @want, $ctype{$type} // $type, $name;
}
is_deeply(\@Lockfn::Options::LAYOUT, \@want, 'Lockfn::Options is struct lock_options');
Lockfn::_ffi();    # attaches the functions
my $o = Lockfn::Options->new;
Lockfn::lock_options_init($o);
is($o->size, FFI::Platypus->new(api => 1)->sizeof('record(Lockfn::Options)'),
    'lock_options_init sets the size Lockfn::Options has');
is_deeply([$o->limit, $o->cancel_fd, $o->mode], [1, -1, 0600], 'the defaults come through');

# every function of the header is attached with its number of parameters
my %fn;
while ($h =~ /^[\w ]+?\**\s*(lock_\w+)\((.*?)\);$/mg) {
    $fn{$1} = $2 eq 'void' ? 0 : scalar(split /,/, $2);
}
ok(keys(%fn) >= 11, 'lockfn.h declares the functions') or diag(explain \%fn);
for my $name (sort keys %fn) {
    my $sig = $Lockfn::SIGNATURES{$name};
    ok($sig, "Lockfn attaches $name") or next;
    is(scalar(@{ $sig->[0] }), $fn{$name}, "$name: $fn{$name} parameters");
}

# the version is the library's
like(Lockfn::version(), qr/^\d+\.\d+\.\d+$/, 'lock_version()');
is($Lockfn::VERSION, Lockfn::version(), '$Lockfn::VERSION is lock_version()');

# the soname the module loads by is the library's
SKIP: {
    my $readelf = `readelf -d '$ENV{LOCKFN_LIBRARY}' 2>/dev/null`;
    skip 'no readelf (binutils) to read the soname', 1 if $? != 0 || !$readelf;
    my ($soname) = $readelf =~ /\(SONAME\).*\[(.+)\]/;
    my $loads = do { local $ENV{LOCKFN_LIBRARY}; Lockfn::_library() };
    is($loads, $soname, "without LOCKFN_LIBRARY Lockfn loads the soname ($soname)");
}

done_testing;
