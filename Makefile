# Build and install lockfn: the shared and static library, header, pkg-config file, CLI with
# its man page and bash completion, the bash helper, Perl module and Python package, where
# Debian expects them.
#
#   make                                  # cargo build --release
#   make install                          # into /usr/local, then ldconfig
#   make install PREFIX=/usr DESTDIR=/tmp/stage
#   make install-debug                    # the debug symbols, separate (gdb finds them)
#   make uninstall                        # same variables as install: removes what it made
#   make deb                              # Debian packages into target/debian/ (see debian/)
#
# Variables: PREFIX (/usr/local), DESTDIR, PROFILE (release; `debug` installs the cargo
# debug build), CARGO_TARGET_DIR (target), LIBDIR, INCLUDEDIR, BINDIR, PKGCONFIGDIR, MANDIR,
# BASHCOMPDIR, PERLDIR, PYTHONDIR, DEBUGDIR (/usr/lib/debug), STRIP (strip; `STRIP=true`
# keeps the debug info in the installed files), LDCONFIG (ldconfig; run after install and
# uninstall when DESTDIR is empty).
# With PREFIX=/usr the Perl module goes to Perl's vendor directory (/usr/share/perl5) and the
# Python package to /usr/lib/python3/dist-packages; with another prefix to the site ones
# (e.g. /usr/local/share/perl/5.36.0, /usr/local/lib/python3.11/dist-packages).
#
# `make install` records every file and every directory it made in
# $(DATADIR)/install-manifest; `make uninstall` removes exactly those (directories only when
# empty), so nothing of lockfn is left and nothing else is touched.

PREFIX ?= /usr/local
DESTDIR ?=
PROFILE ?= release
CARGO ?= cargo
INSTALL ?= install
STRIP ?= strip
OBJCOPY ?= objcopy
LDCONFIG ?= ldconfig

VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))
MULTIARCH := $(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null)

LIBDIR ?= $(PREFIX)/lib$(if $(MULTIARCH),/$(MULTIARCH))
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DATADIR ?= $(PREFIX)/share/lockfn
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
DEBUGDIR ?= /usr/lib/debug

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
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
OUT := $(TARGET_DIR)/$(PROFILE)
SOURCES := Cargo.toml Cargo.lock build.rs $(shell find src -name '*.rs')
MANIFEST := $(DATADIR)/install-manifest
PYDIST := $(PYTHONDIR)/lockfn-$(VERSION).dist-info

.PHONY: all build install install-debug uninstall deb

all: build

build: $(OUT)/liblockfn.so $(OUT)/liblockfn.a $(OUT)/lockfn

$(OUT)/liblockfn.so $(OUT)/liblockfn.a $(OUT)/lockfn &: $(SOURCES)
	$(CARGO) build $(CARGO_FLAGS)
	@touch $(OUT)/liblockfn.so $(OUT)/liblockfn.a $(OUT)/lockfn

# mkdirs DIR...: make the directories (under DESTDIR) and record each one made in the manifest.
define mkdirs
	@for d in $(1); do \
	    t="$(DESTDIR)$$d"; missing=""; \
	    while [ ! -d "$$t" ] && [ "$$t" != "$(DESTDIR)" ]; do \
	        missing="$$t $$missing"; t=$$(dirname "$$t"); done; \
	    for m in $$missing; do \
	        mkdir -m 0755 "$$m" && echo "d $${m#"$(DESTDIR)"}" >>"$(DESTDIR)$(MANIFEST).new" || exit 1; \
	    done; \
	done
endef
# inst MODE SRC DEST: install one file and record it.
define inst
	$(INSTALL) -m $(1) $(2) $(DESTDIR)$(3)
	@echo "f $(3)" >>"$(DESTDIR)$(MANIFEST).new"
endef
# link TARGET NAME: a symbolic link, recorded.
define link
	ln -sf $(1) $(DESTDIR)$(2)
	@echo "f $(2)" >>"$(DESTDIR)$(MANIFEST).new"
endef

install: build
	@if [ -n "$(DESTDIR)" ]; then mkdir -p "$(DESTDIR)"; fi
	@d="$(DESTDIR)$(DATADIR)"; t="$$d"; missing=""; \
	    while [ ! -d "$$t" ] && [ "$$t" != "$(DESTDIR)" ]; do missing="$$t $$missing"; t=$$(dirname "$$t"); done; \
	    mkdir -p "$$d"; \
	    if [ -f "$(DESTDIR)$(MANIFEST)" ]; then grep '^d ' "$(DESTDIR)$(MANIFEST)" >"$(DESTDIR)$(MANIFEST).new"; \
	    else : >"$(DESTDIR)$(MANIFEST).new"; fi; \
	    for m in $$missing; do echo "d $${m#"$(DESTDIR)"}" >>"$(DESTDIR)$(MANIFEST).new"; done
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' lockfn.pc.in >$(OUT)/lockfn.pc
	$(call mkdirs,$(LIBDIR) $(PKGCONFIGDIR) $(INCLUDEDIR) $(BINDIR) $(PERLDIR) \
	    $(PYTHONDIR)/lockfn $(PYDIST) $(MANDIR)/man1 $(MANDIR)/man3 $(BASHCOMPDIR))
	$(call inst,0644,$(OUT)/liblockfn.so,$(LIBDIR)/liblockfn.so.$(VERSION))
	$(STRIP) --strip-unneeded --remove-section=.comment --remove-section=.note \
	    $(DESTDIR)$(LIBDIR)/liblockfn.so.$(VERSION)
	$(call link,liblockfn.so.$(VERSION),$(LIBDIR)/liblockfn.so.$(SOMAJOR))
	$(call link,liblockfn.so.$(SOMAJOR),$(LIBDIR)/liblockfn.so)
	$(call inst,0644,$(OUT)/liblockfn.a,$(LIBDIR)/liblockfn.a)
	$(STRIP) --strip-debug --remove-section=.comment --remove-section=.note \
	    --enable-deterministic-archives $(DESTDIR)$(LIBDIR)/liblockfn.a
	$(call inst,0644,include/lockfn.h,$(INCLUDEDIR)/lockfn.h)
	$(call inst,0644,$(OUT)/lockfn.pc,$(PKGCONFIGDIR)/lockfn.pc)
	$(call inst,0755,$(OUT)/lockfn,$(BINDIR)/lockfn)
	$(STRIP) --remove-section=.comment --remove-section=.note $(DESTDIR)$(BINDIR)/lockfn
	$(call inst,0755,shell/lockfn.sh,$(BINDIR)/lockfn.sh)
	$(call inst,0644,doc/lockfn.1,$(MANDIR)/man1/lockfn.1)
	$(call link,lockfn.1,$(MANDIR)/man1/lockfn.sh.1)
	$(call inst,0644,doc/lockfn.bash-completion,$(BASHCOMPDIR)/lockfn)
	$(call inst,0644,bindings/perl/lib/Lockfn.pm,$(PERLDIR)/Lockfn.pm)
	pod2man --section=3pm --center="lockfn" --release="lockfn $(VERSION)" \
	    bindings/perl/lib/Lockfn.pm $(DESTDIR)$(MANDIR)/man3/Lockfn.3pm
	@echo "f $(MANDIR)/man3/Lockfn.3pm" >>"$(DESTDIR)$(MANIFEST).new"
	$(call inst,0644,bindings/python/lockfn/__init__.py,$(PYTHONDIR)/lockfn/__init__.py)
	$(call inst,0644,bindings/python/lockfn/_ffi.py,$(PYTHONDIR)/lockfn/_ffi.py)
	$(call inst,0644,bindings/python/lockfn/py.typed,$(PYTHONDIR)/lockfn/py.typed)
	printf 'Metadata-Version: 2.1\nName: lockfn\nVersion: %s\nSummary: %s\nLicense: MIT OR Apache-2.0\n' \
	    '$(VERSION)' 'One lock API over POSIX semaphores, pmxcfs, ZooKeeper and Consul' \
	    >$(DESTDIR)$(PYDIST)/METADATA
	printf 'make\n' >$(DESTDIR)$(PYDIST)/INSTALLER
	@echo "f $(PYDIST)/METADATA" >>"$(DESTDIR)$(MANIFEST).new"
	@echo "f $(PYDIST)/INSTALLER" >>"$(DESTDIR)$(MANIFEST).new"
	@sort -u "$(DESTDIR)$(MANIFEST).new" >"$(DESTDIR)$(MANIFEST)" && rm -f "$(DESTDIR)$(MANIFEST).new"
	@if [ -z "$(DESTDIR)" ]; then $(MAKE) --no-print-directory ldconfig; fi

# The debug symbols of the library and the CLI, as /usr/lib/debug/.build-id/NN/REST.debug
# (where gdb looks). Needs the unstripped build in $(OUT).
install-debug: build
	@set -e; for f in $(OUT)/liblockfn.so $(OUT)/lockfn; do \
	    id=$$(readelf -n "$$f" | sed -n 's/.*Build ID: *//p'); \
	    [ -n "$$id" ] || { echo "$$f has no build id" >&2; exit 1; }; \
	    dir=$(DEBUGDIR)/.build-id/$$(echo $$id | cut -c1-2); \
	    dbg=$$dir/$$(echo $$id | cut -c3-).debug; \
	    t="$(DESTDIR)$$dir"; missing=""; \
	    while [ ! -d "$$t" ] && [ "$$t" != "$(DESTDIR)" ]; do missing="$$t $$missing"; t=$$(dirname "$$t"); done; \
	    mkdir -p "$(DESTDIR)$(DATADIR)"; \
	    for m in $$missing; do mkdir -m 0755 "$$m"; echo "d $${m#"$(DESTDIR)"}" >>"$(DESTDIR)$(MANIFEST)"; done; \
	    echo "$(OBJCOPY) --only-keep-debug --compress-debug-sections $$f $(DESTDIR)$$dbg"; \
	    $(OBJCOPY) --only-keep-debug --compress-debug-sections "$$f" "$(DESTDIR)$$dbg"; \
	    chmod 0644 "$(DESTDIR)$$dbg"; \
	    echo "f $$dbg" >>"$(DESTDIR)$(MANIFEST)"; \
	done; sort -u -o "$(DESTDIR)$(MANIFEST)" "$(DESTDIR)$(MANIFEST)"

uninstall:
	@if [ -f "$(DESTDIR)$(MANIFEST)" ]; then \
	    dirs=$$(sed -n 's/^d //p' "$(DESTDIR)$(MANIFEST)" | sort -r); \
	    for f in $$(sed -n 's/^f //p' "$(DESTDIR)$(MANIFEST)"); do \
	        echo "rm -f $(DESTDIR)$$f"; rm -f "$(DESTDIR)$$f"; done; \
	    rm -f "$(DESTDIR)$(MANIFEST)"; \
	    rm -rf "$(DESTDIR)$(PYTHONDIR)/lockfn/__pycache__"; \
	    for d in $$dirs; do rmdir "$(DESTDIR)$$d" 2>/dev/null && echo "rmdir $(DESTDIR)$$d"; done; \
	else \
	    echo "no $(DESTDIR)$(MANIFEST): removing the files of lockfn $(VERSION) by name"; \
	    rm -f $(DESTDIR)$(LIBDIR)/liblockfn.so $(DESTDIR)$(LIBDIR)/liblockfn.so.$(SOMAJOR) \
	        $(DESTDIR)$(LIBDIR)/liblockfn.so.$(VERSION) $(DESTDIR)$(LIBDIR)/liblockfn.a \
	        $(DESTDIR)$(INCLUDEDIR)/lockfn.h $(DESTDIR)$(PKGCONFIGDIR)/lockfn.pc \
	        $(DESTDIR)$(BINDIR)/lockfn $(DESTDIR)$(BINDIR)/lockfn.sh $(DESTDIR)$(DATADIR)/lockfn.sh \
	        $(DESTDIR)$(MANDIR)/man1/lockfn.1 $(DESTDIR)$(MANDIR)/man1/lockfn.sh.1 $(DESTDIR)$(BASHCOMPDIR)/lockfn \
	        $(DESTDIR)$(PERLDIR)/Lockfn.pm $(DESTDIR)$(MANDIR)/man3/Lockfn.3pm; \
	    rm -rf $(DESTDIR)$(PYTHONDIR)/lockfn $(DESTDIR)$(PYDIST); \
	fi; rmdir "$(DESTDIR)$(DATADIR)" 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ]; then $(MAKE) --no-print-directory ldconfig; fi

.PHONY: ldconfig
ldconfig:
	@if [ "$$(id -u)" = 0 ]; then echo "$(LDCONFIG)"; $(LDCONFIG) || true; \
	else echo "not root: run ldconfig as root, or set LOCKFN_LIBRARY / LD_LIBRARY_PATH"; fi

# Debian packages of this tree into target/debian/ (or DEB_OUT): liblockfn0, liblockfn-dev,
# lockfn, liblockfn-perl, python3-lockfn and their -dbgsym. With rustup's toolchain (Debian
# 12) add DEB_BUILD_PROFILES=pkg.lockfn.rustup; Debian 13's own cargo/rustc need nothing.
DEB_OUT ?= $(TARGET_DIR)/debian
deb:
	mkdir -p $(DEB_OUT)
	dpkg-checkbuilddeps
	debian/rules build
	LOCKFN_DEB_DESTDIR=$(abspath $(DEB_OUT)) debian/rules binary
	debian/rules clean
	@ls -l $(DEB_OUT)/*.deb
