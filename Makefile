# Build and install lockfn: the shared and static library, header, pkg-config file, CLI,
# bash helper, Perl module and Python package, where Debian expects them.
#
#   make                                  # cargo build --release
#   make install PREFIX=/usr DESTDIR=/tmp/stage
#   make uninstall PREFIX=/usr DESTDIR=/tmp/stage
#
# Variables: PREFIX (/usr/local), DESTDIR, PROFILE (release; `debug` installs the cargo
# debug build), LIBDIR, INCLUDEDIR, BINDIR, PKGCONFIGDIR, DATADIR, MANDIR, PERLDIR, PYTHONDIR.
# With PREFIX=/usr the Perl module goes to Perl's vendor directory (/usr/share/perl5) and the
# Python package to /usr/lib/python3/dist-packages; with another prefix to the site ones
# (e.g. /usr/local/share/perl/5.36.0, /usr/local/lib/python3.11/dist-packages).

PREFIX ?= /usr/local
DESTDIR ?=
PROFILE ?= release
CARGO ?= cargo
INSTALL ?= install

VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))
MULTIARCH := $(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null)

LIBDIR ?= $(PREFIX)/lib$(if $(MULTIARCH),/$(MULTIARCH))
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DATADIR ?= $(PREFIX)/share/lockfn
MANDIR ?= $(PREFIX)/share/man

PERL ?= perl
PYTHON ?= python3
ifeq ($(PREFIX),/usr)
PERLDIR ?= $(shell $(PERL) -MConfig -e 'print $$Config{installvendorlib}')
PYTHONDIR ?= /usr/lib/python3/dist-packages
else
PERLDIR ?= $(shell $(PERL) -MConfig -e '($$d = $$Config{installsitelib}) =~ s{^\Q$$Config{siteprefix}\E}{$(PREFIX)}; print $$d')
PYTHONDIR ?= $(PREFIX)/lib/python3$(shell $(PYTHON) -c 'import sys; print(".%d" % sys.version_info[1])' 2>/dev/null)/dist-packages
endif

ifeq ($(PROFILE),release)
CARGO_FLAGS := --release
else
CARGO_FLAGS :=
endif
OUT := target/$(PROFILE)
SOURCES := Cargo.toml Cargo.lock build.rs $(shell find src -name '*.rs')

.PHONY: all build install uninstall

all: build

build: $(OUT)/liblockfn.so $(OUT)/liblockfn.a $(OUT)/lockfn

$(OUT)/liblockfn.so $(OUT)/liblockfn.a $(OUT)/lockfn &: $(SOURCES)
	$(CARGO) build $(CARGO_FLAGS)
	@touch $(OUT)/liblockfn.so $(OUT)/liblockfn.a $(OUT)/lockfn

install: build
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' lockfn.pc.in >$(OUT)/lockfn.pc
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(INCLUDEDIR) \
	    $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR) $(DESTDIR)$(PERLDIR) \
	    $(DESTDIR)$(PYTHONDIR)/lockfn $(DESTDIR)$(MANDIR)/man3
	$(INSTALL) -m 0644 $(OUT)/liblockfn.so $(DESTDIR)$(LIBDIR)/liblockfn.so.$(VERSION)
	ln -sf liblockfn.so.$(VERSION) $(DESTDIR)$(LIBDIR)/liblockfn.so.$(SOMAJOR)
	ln -sf liblockfn.so.$(SOMAJOR) $(DESTDIR)$(LIBDIR)/liblockfn.so
	$(INSTALL) -m 0644 $(OUT)/liblockfn.a $(DESTDIR)$(LIBDIR)/liblockfn.a
	$(INSTALL) -m 0644 include/lockfn.h $(DESTDIR)$(INCLUDEDIR)/lockfn.h
	$(INSTALL) -m 0644 $(OUT)/lockfn.pc $(DESTDIR)$(PKGCONFIGDIR)/lockfn.pc
	$(INSTALL) -m 0755 $(OUT)/lockfn $(DESTDIR)$(BINDIR)/lockfn
	$(INSTALL) -m 0644 shell/lockfn.sh $(DESTDIR)$(DATADIR)/lockfn.sh
	$(INSTALL) -m 0644 bindings/perl/lib/Lockfn.pm $(DESTDIR)$(PERLDIR)/Lockfn.pm
	pod2man --section=3pm --center="lockfn" --release="lockfn $(VERSION)" \
	    bindings/perl/lib/Lockfn.pm $(DESTDIR)$(MANDIR)/man3/Lockfn.3pm
	$(INSTALL) -m 0644 bindings/python/lockfn/__init__.py bindings/python/lockfn/_ffi.py \
	    bindings/python/lockfn/py.typed $(DESTDIR)$(PYTHONDIR)/lockfn/
	$(INSTALL) -d $(DESTDIR)$(PYTHONDIR)/lockfn-$(VERSION).dist-info
	printf 'Metadata-Version: 2.1\nName: lockfn\nVersion: %s\nSummary: One lock API over POSIX semaphores, pmxcfs, ZooKeeper and Consul\n' \
	    '$(VERSION)' >$(DESTDIR)$(PYTHONDIR)/lockfn-$(VERSION).dist-info/METADATA
	printf 'make\n' >$(DESTDIR)$(PYTHONDIR)/lockfn-$(VERSION).dist-info/INSTALLER

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/liblockfn.so $(DESTDIR)$(LIBDIR)/liblockfn.so.$(SOMAJOR) \
	    $(DESTDIR)$(LIBDIR)/liblockfn.so.$(VERSION) $(DESTDIR)$(LIBDIR)/liblockfn.a \
	    $(DESTDIR)$(INCLUDEDIR)/lockfn.h $(DESTDIR)$(PKGCONFIGDIR)/lockfn.pc \
	    $(DESTDIR)$(BINDIR)/lockfn $(DESTDIR)$(DATADIR)/lockfn.sh \
	    $(DESTDIR)$(PERLDIR)/Lockfn.pm $(DESTDIR)$(MANDIR)/man3/Lockfn.3pm
	rm -rf $(DESTDIR)$(PYTHONDIR)/lockfn $(DESTDIR)$(PYTHONDIR)/lockfn-$(VERSION).dist-info
	-rmdir $(DESTDIR)$(DATADIR)
