package Lockfn;

use strict;
use warnings;

use Carp ();
use FFI::Platypus 1.00;
use FFI::Platypus::Buffer qw(scalar_to_buffer);
use JSON::PP ();
use Time::HiRes ();

our $VERSION = '0.1.0';

# How long one wait lasts while the application has Perl signal handlers (seconds).
our $SLICE = 0.1;

# FFI::Platypus cannot read a header: the constants, the struct layout and the signatures
# below are copies of lockfn.h, and t/00-header.t fails when a copy differs from it.
use constant {
    LOCK_OK           => 0,
    LOCK_BUSY         => 1,
    LOCK_EINVAL       => 2,
    LOCK_ELOST        => 3,
    LOCK_ENOTHELD     => 4,
    LOCK_EUNAVAILABLE => 5,
    LOCK_EPERM        => 6,
    LOCK_ECANCELED    => 7,
    LOCK_EFORKED      => 8,
    LOCK_EINTERNAL    => 9,

    LOCK_FLAG_SHARED     => 1,
    LOCK_FLAG_REENTRANT  => 2,
    # Persistent locks outlive their process; how long per service is said in lockfn.h at
    # LOCK_FLAG_PERSIST. This module holds locks for the life of a lock object only: take a
    # persistent one with `lockfn acquire --persist TARGET`, end it with `lockfn release`.
    LOCK_FLAG_PERSIST    => 4,
    LOCK_FLAG_AUTO_RENEW => 8,
};

package Lockfn::Options {
    use FFI::Platypus::Record;
    # struct lock_options (include/lockfn.h); FFI::Platypus::Record aligns the fields.
    our @LAYOUT = (
        uint32 => 'size',
        double => 'timeout',
        uint32 => 'ttl',
        uint32 => 'limit',
        uint32 => 'flags',
        opaque => 'holder',
        int    => 'cancel_fd',
        uint32 => 'mode',
        double => 'lock_delay',
        'uint64[4]' => 'reserved',
    );
    record_layout_1(@LAYOUT);
}

# The C functions: name => [argument types, return type].
our %SIGNATURES = (
    lock_options_init => [['lock_options_p'], 'void'],
    lock_acquire      => [['string', 'lock_options_p', 'opaque*'], 'int'],
    lock_update       => [['opaque'], 'int'],
    lock_release      => [['opaque'], 'int'],
    lock_gc           => [['string', 'uint*'], 'int'],
    lock_token        => [['opaque'], 'uint64'],
    lock_status       => [['string', 'opaque*'], 'int'],
    lock_string_free  => [['opaque'], 'void'],
    lock_strerror     => [['int'], 'string'],
    lock_last_error   => [[], 'string'],
    lock_version      => [[], 'string'],
);

sub _library {
    return $ENV{LOCKFN_LIBRARY} if $ENV{LOCKFN_LIBRARY};
    return 'liblockfn.so.0';
}

my $ffi;

sub _ffi {
    return $ffi if $ffi;
    my $lib = _library();
    # dlopen first: FFI::Platypus would only report a missing symbol, not why.
    require FFI::Platypus::DL;
    my $h = FFI::Platypus::DL::dlopen($lib, FFI::Platypus::DL::RTLD_PLATYPUS_DEFAULT());
    if (!$h) {
        my $why = FFI::Platypus::DL::dlerror() // 'unknown error';
        die "lockfn: cannot load LOCKFN_LIBRARY ($why)\n" if $ENV{LOCKFN_LIBRARY};
        die "lockfn: cannot load liblockfn ($why): install it (liblockfn0, or `make install`);"
          . " after `make install`, run ldconfig or set LOCKFN_LIBRARY to the library's path\n";
    }
    FFI::Platypus::DL::dlclose($h);
    my $f = FFI::Platypus->new(api => 1);
    $f->lib($lib);
    $f->type('record(Lockfn::Options)*' => 'lock_options_p');
    my %sig = %SIGNATURES;
    for my $name (sort keys %sig) {
        my $fn = eval { $f->function($name => @{ $sig{$name} }) };
        die "lockfn: $lib is not a usable liblockfn: "
          . ($@ =~ s/ at .*//sr)
          . " (install liblockfn $VERSION; after `make install`, run ldconfig or set"
          . " LOCKFN_LIBRARY to the library's path)\n"
          if !$fn;
        $f->attach($name => @{ $sig{$name} });
    }
    $ffi = $f;
    return $ffi;
}

# The error for a failed call: a Lockfn::Error object that stringifies to its message.
sub _error {
    my ($rc, $target) = @_;
    my $detail = lock_last_error();
    $detail = lock_strerror($rc) if !defined($detail) || $detail eq '';
    return Lockfn::Error->new(code => $rc, message => $detail, target => $target);
}

# lock_with's NAME (PVE's lockid): the target without its "scheme:", split where the library
# splits it (at the first ':'; a "scheme://" URL is named whole). What the name may be is the
# library's to judge.
sub _lockid {
    my ($target) = @_;
    my $i = index($target, ':');
    return $target if $i < 0 || substr($target, $i + 1, 2) eq '//';
    return substr($target, $i + 1);
}

# ttl and limit go into uint32_t fields: only the conversion is checked here (a number or a
# string of digits from 0 to 4294967295; -5 would wrap to 4294967291, 'abc' would become 0).
# What the value means (limit >= 1, a service's ttl range) is the library's to judge.
sub _uint32 {
    my ($v, $what) = @_;
    die Lockfn::Error->new(code => LOCK_EINVAL,
        message => "$what must be a whole number from 0 to 4294967295"
          . " (lock_options.$what is a uint32_t), not '$v'")
      if ref($v) || $v !~ /\A\s*\+?[0-9]+\s*\z/ || $v > 4294967295;
    return 0 + $v;
}

# timeout: seconds (fractions allowed) >= 0, or -1 (wait forever); NaN, other negatives and
# text die with LOCK_EINVAL. inf (or anything too long for the clock) waits forever.
sub _check_timeout {
    my ($v) = @_;
    my $num = !ref($v) && $v =~ /\A\s*(?:-1|\+?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|\+?inf(?:inity)?)\s*\z/i;
    die Lockfn::Error->new(code => LOCK_EINVAL,
        message => "timeout must be a number of seconds >= 0 or -1 (forever), not '"
          . (defined $v ? $v : 'undef') . "'")
      if !$num;
    my $t = 0 + $v;
    return -1 if $t > 1e15;    # inf, 1e300: forever (the library says the same)
    return $t;
}

sub _check_text {
    my ($text, $what) = @_;
    die Lockfn::Error->new(code => LOCK_EINVAL, message => "$what is undefined")
      if !defined $text;
    die Lockfn::Error->new(code => LOCK_EINVAL, message => "$what contains a NUL byte")
      if $text =~ /\0/;
    return $text;
}

=head1 NAME

Lockfn - one lock API over POSIX semaphores, pmxcfs, ZooKeeper and Consul

=head1 SYNOPSIS

    use Lockfn;

    {
        my $lock = Lockfn->acquire('pmxcfs:vm-100', timeout => 10, holder => 'migrate');
        print "token ", $lock->token, "\n";
        $lock->update;          # renew; dies with code LOCK_ELOST if the lock is gone
    }                           # released here (or by $lock->release)

    # The Proxmox calling convention (PVE::Cluster::cfs_lock_*):
    my $res = Lockfn::lock_with('pmxcfs:storage-cfg', 10, sub { ...; return 42 }, @param);
    die $@ if $@;               # "cfs-lock 'storage-cfg' error: got lock request timeout\n"

    my $st = Lockfn::status('sem:backup');   # { held => 1, holders => [ { pid => ... } ] }

=head1 DESCRIPTION

A thin FFI::Platypus binding of liblockfn (the library is C<$ENV{LOCKFN_LIBRARY}> or the
system's C<liblockfn.so.0>). Targets are C<sem:NAME>, C<pmxcfs:NAME>, C<zk:NAME>,
C<consul:NAME>, C<zk://h:p/PATH>, C<consul://h:p/KEY> or a bare C<NAME>.

Errors die with a C<Lockfn::Error> object: C<< $err->code >> (one of the C<LOCK_*>
constants), C<< $err->message >>, C<< $err->target >>; it stringifies to the message and a
newline, so C<die $@> and C<print $@> read well.

Perl defers its signal handlers ("safe signals") while a C function runs. So while the
program has a C<$SIG{INT}>, C<TERM>, C<HUP>, C<QUIT>, C<ALRM>, C<USR1>, C<USR2> or C<CHLD>
handler, C<acquire> waits in slices of C<$Lockfn::SLICE> seconds (0.1) and a handler runs
(and may C<die>) promptly; the lock is never left taken by a wait that a handler ended.
Without a handler, Ctrl-C ends the process as usual and the library recovers the dead
holder's lock.

If the library cannot be loaded, C<acquire> dies with "cannot load liblockfn": after
C<make install> run C<ldconfig> (as root) or set C<LOCKFN_LIBRARY> to its path; the Debian
package liblockfn0 needs neither.

=head1 METHODS

=head2 Lockfn->acquire($target, %opts)

Options: C<timeout> (seconds; default: wait forever; 0: try once), C<ttl>, C<limit>,
C<shared>, C<holder>, C<auto_renew>, C<reentrant>. Returns a guard object that releases
the lock when it goes out of scope. Dies on failure, including when the lock is busy
(C<< $@->code == Lockfn::LOCK_BUSY >>).

=cut

sub acquire {
    my ($class, $target, %opt) = @_;
    _ffi();
    _check_text($target, 'target');
    my %known = map { $_ => 1 } qw(timeout ttl limit shared holder auto_renew reentrant);
    for (keys %opt) {
        Carp::croak("Lockfn->acquire: unknown option '$_'") if !$known{$_};
    }
    my $o = Lockfn::Options->new;
    lock_options_init($o);
    $o->timeout(defined $opt{timeout} ? _check_timeout($opt{timeout}) : -1);
    $o->ttl(defined $opt{ttl} ? _uint32($opt{ttl}, 'ttl') : 0);
    $o->limit(defined $opt{limit} ? _uint32($opt{limit}, 'limit') : 1);
    my $flags = 0;
    $flags |= LOCK_FLAG_SHARED     if $opt{shared};
    $flags |= LOCK_FLAG_AUTO_RENEW if $opt{auto_renew};
    $flags |= LOCK_FLAG_REENTRANT  if $opt{reentrant};
    $o->flags($flags);
    my $holder;
    if (defined $opt{holder}) {
        $holder = _check_text($opt{holder}, 'holder') . "\0";
        utf8::encode($holder) if utf8::is_utf8($holder);
        my ($ptr) = scalar_to_buffer($holder);
        $o->holder($ptr);
    }
    # The guard exists before the call, and the library writes the handle straight into it:
    # a signal handler that dies right after the call still finds the lock and releases it.
    my $self = bless { handle => undef, pid => $$, target => $target }, ref($class) || $class;
    my $timeout = $o->timeout;
    my $slices = _signal_handlers_set() && $timeout != 0;
    my $deadline = $timeout < 0 ? undef : Time::HiRes::time() + $timeout;
    while (1) {
        if ($slices) {
            # Perl runs its signal handlers only between calls ("safe signals"): wait in short
            # slices so that a $SIG{INT}/$SIG{ALRM} handler runs (and may die) promptly. With
            # no time left the last call is a try once: its busy error is the one raised, so
            # the library's message never names a slice as the whole wait.
            my $left = defined $deadline ? $deadline - Time::HiRes::time() : $SLICE;
            $o->timeout($left <= 0 ? 0 : $left < $SLICE ? $left : $SLICE);
        }
        my $rc = lock_acquire($target, $o, \$self->{handle});
        return $self if $rc == LOCK_OK;
        $self->{handle} = undef;
        die _error($rc, $target) if !$slices || $rc != LOCK_BUSY || $o->timeout == 0;
    }
}

sub _signal_handlers_set {
    for my $sig (qw(INT TERM HUP QUIT ALRM USR1 USR2 CHLD)) {
        my $h = $SIG{$sig};
        return 1 if defined($h) && (ref($h) || ($h ne '' && $h ne 'DEFAULT' && $h ne 'IGNORE'));
    }
    return 0;
}

=head2 $lock->release

Releases the lock now (the guard does nothing more when it goes out of scope). Dies with
C<LOCK_ENOTHELD> when already released, C<LOCK_ELOST> when the lock had been lost, and
C<LOCK_EFORKED> in a child process after fork() (the parent's lock is untouched).

=cut

sub release {
    my ($self) = @_;
    my $h = delete $self->{handle};
    die Lockfn::Error->new(code => LOCK_ENOTHELD, target => $self->{target},
        message => "release of lock $self->{target} that is not held")
      if !defined $h;
    my $rc = lock_release($h);
    die _error($rc, $self->{target}) if $rc != LOCK_OK;
    return 1;
}

=head2 $lock->update

Renews the lock and checks it is still held; dies with C<LOCK_ELOST> when it is gone.

=cut

sub update {
    my ($self) = @_;
    my $h = $self->{handle};
    die Lockfn::Error->new(code => LOCK_ENOTHELD, target => $self->{target},
        message => "update of lock $self->{target} that is not held")
      if !defined $h;
    my $rc = lock_update($h);
    die _error($rc, $self->{target}) if $rc != LOCK_OK;
    return 1;
}

=head2 $lock->token, $lock->target, $lock->held

The fencing token of this acquisition (grows with every acquisition of the same lock; 0
once released), the target string, and whether this guard still holds the lock.

=cut

sub token {
    my ($self) = @_;
    return 0 if !defined $self->{handle};
    return lock_token($self->{handle});
}

sub target { $_[0]->{target} }

sub held { defined($_[0]->{handle}) && $_[0]->{pid} == $$ ? 1 : 0 }

sub DESTROY {
    my ($self) = @_;
    my $h = delete $self->{handle};
    return if !defined $h;
    local ($@, $!, $?);
    # In a child after fork() the library only forgets its copy (LOCK_EFORKED); the parent's
    # lock is untouched.
    lock_release($h);
}

=head1 FUNCTIONS

=head2 Lockfn::lock_with($target, $timeout, $code, @param)

Like C<PVE::Cluster::cfs_lock_*>: waits up to C<$timeout> seconds (10 when false) for the
lock, runs C<< $code->(@param) >> while holding it (renewed in the background), always
releases, and returns what C<$code> returned with C<$@> cleared. On failure it returns undef
and sets C<$@>: to C<"cfs-lock 'NAME' error: got lock request timeout\n"> when the lock was
busy, C<"cfs-lock 'NAME' error: MESSAGE\n"> for other lock errors (NAME is the target after
its C<scheme:>, a URL target whole; MESSAGE is the library's), and to C<$code>'s own error
unchanged when C<$code> died. An outer C<alarm> is suspended while it runs and restored after.

=cut

sub lock_with {
    my ($target, $timeout, $code, @param) = @_;
    my $prev_alarm = alarm(0);
    $timeout = 10 if !$timeout;
    my $name = defined $target ? _lockid($target) : '';
    my ($res, $lock, $is_code_err) = (undef, undef, 0);
    eval {
        $lock = Lockfn->acquire($target, timeout => $timeout, auto_renew => 1);
        $is_code_err = 1;
        $res = $code->(@param);
    };
    my $err = $@;
    if ($lock) {
        eval { $lock->release };
        # A lock lost while $code ran is an error even when $code succeeded.
        $err ||= $@ if $@ && ref($@) && $@->code == LOCK_ELOST;
        undef $lock;
    }
    alarm($prev_alarm);
    if ($err) {
        if ($is_code_err && !(ref($err) && ref($err) eq 'Lockfn::Error' && $err->code == LOCK_ELOST)) {
            $@ = $err;
        } else {
            my $msg = ref($err) eq 'Lockfn::Error' && $err->code == LOCK_BUSY
              ? "got lock request timeout\n"
              : "$err";
            $msg .= "\n" if $msg !~ /\n\z/;
            $@ = "cfs-lock '$name' error: $msg";
        }
        return undef;
    }
    $@ = undef;
    return $res;
}

=head2 Lockfn::status($target)

Who holds C<$target>: a hash reference with C<target>, C<service>, C<held>, C<limit>,
C<available> and C<holders> (host, pid, start_time, boot_id, since, token, holder, state).
Who may read it is who the service lets open the lock: a C<sem:> lock is made with mode 600,
so another non-root user dies with C<LOCK_EPERM> on root's lock; C<pmxcfs:> is root only;
C<zk:> and C<consul:> follow the ZooKeeper ACLs or the Consul token.

=cut

sub status {
    my ($target) = @_;
    _ffi();
    _check_text($target, 'target');
    my $p;
    my $rc = lock_status($target, \$p);
    die _error($rc, $target) if $rc != LOCK_OK;
    my $json = $ffi->cast('opaque' => 'string', $p);
    lock_string_free($p);
    return JSON::PP->new->utf8(0)->decode($json);
}

=head2 Lockfn::gc($scope)

Cleans what dead holders on this host left behind (C<sem>, C<pmxcfs>, C<zk>, C<consul>,
optionally C<:PREFIX>; undef for sem and pmxcfs) and returns how many items were removed.

=cut

sub gc {
    my ($scope) = @_;
    _ffi();
    _check_text($scope, 'scope') if defined $scope;
    my $n = 0;
    my $rc = lock_gc($scope, \$n);
    die _error($rc, $scope) if $rc != LOCK_OK;
    return $n;
}

=head2 Lockfn::version()

The version of the loaded liblockfn.

=cut

sub version { _ffi(); return lock_version() }

package Lockfn::Error {
    use overload '""' => sub { my $m = $_[0]->{message}; $m =~ /\n\z/ ? $m : "$m\n" },
      'bool' => sub { 1 }, fallback => 1;
    sub new { my ($class, %a) = @_; return bless {%a}, $class }
    sub code    { $_[0]->{code} }
    sub message { $_[0]->{message} }
    sub target  { $_[0]->{target} }
}

1;

=head1 SEE ALSO

L<lockfn(1)>, F<lockfn.h>, the Python package C<lockfn>, F<lockfn.sh>.

=head1 LICENSE

MIT OR Apache-2.0, at your option (F<LICENSE-MIT>, F<LICENSE-APACHE>).

=cut
