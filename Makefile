# Makefile - the one, non-recursive build of Meerkat; everything goes to build/.
#   make                 all binaries            make WERROR=1        warnings are errors
#   make run             install deps, build, start a local cluster
#   make test            install deps, build (sanitizers on), run every test
#   make bench           build and run the benchmarks
#   make fuzz            libFuzzer targets (clang)
#   make install PREFIX=/usr/local   libmeerkat.a, headers, meerkat.pc
#   make SAN=address,undefined      sanitizer build in build/san/

CC        ?= gcc
PREFIX    ?= /usr/local
PKGS      := libzmq libprotobuf-c openssl expat hiredis libpq yaml-0.1 libidn sqlite3 libcurl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

ifdef SAN
BUILD     ?= build/san
SANFLAGS  := -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
else
BUILD     ?= build
SANFLAGS  :=
endif

CFLAGS    ?= -O2 -g
CFLAGS    += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wshadow -Wformat=2 \
             -fno-strict-aliasing -MMD -MP -Icommon -I$(BUILD)/gen $(PKG_CFLAGS) $(SANFLAGS)
ifeq ($(WERROR),1)
CFLAGS    += -Werror
endif
LDFLAGS   += $(SANFLAGS)
LDLIBS    := $(PKG_LIBS) -lev -lm -lpthread

GEN       := $(BUILD)/gen
PROTOS    := $(wildcard proto/*.proto)
GEN_C     := $(PROTOS:proto/%.proto=$(GEN)/%.pb-c.c)
GEN_H     := $(PROTOS:proto/%.proto=$(GEN)/%.pb-c.h)

COMMON_SRC := $(wildcard common/*.c)
LIB_OBJ    := $(COMMON_SRC:%.c=$(BUILD)/obj/%.o) $(GEN_C:$(GEN)/%.c=$(BUILD)/obj/gen/%.o)
LIB        := $(BUILD)/libmeerkat.a

ROLES     := c2s router mam pusher gd
ROLE_BINS := $(ROLES:%=$(BUILD)/meerkat-%)
CTL_BIN   := $(BUILD)/meerkat
BINS      := $(ROLE_BINS) $(CTL_BIN)

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES := $(FUZZ_SRC:tests/fuzz/fuzz_%.c=%)
REPLAY_BINS := $(FUZZ_NAMES:%=$(BUILD)/tests/replay_%)
TOOL_SRC  := $(wildcard tests/tools/*.c)
TOOL_BINS := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tools/%)
BENCH_SRC := $(wildcard tests/bench/*.c)
BENCH_BINS := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)

.PHONY: all run test unit replay integration bench fuzz install deps clean
.SECONDARY:

all: $(BINS) $(TOOL_BINS)

deps:
	@./deploy/install-deps.sh

# --- protobuf-c generation -------------------------------------------------
$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: proto/%.proto
	@mkdir -p $(GEN)
	protoc-c --proto_path=proto --c_out=$(GEN) $<

# Every object may include the generated header: generate it first.
$(BUILD)/obj/%.o: %.c | $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/obj/gen/%.o: $(GEN)/%.c
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Werror -Wshadow -Wformat=2,$(CFLAGS)) -c -o $@ $<

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# --- binaries: one folder per process ----------------------------------------
define ROLE_RULE
$(1)_OBJ := $$(patsubst %.c,$(BUILD)/obj/%.o,$$(wildcard $(1)/*.c))
$(BUILD)/meerkat-$(1): $$($(1)_OBJ) $(LIB)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach r,$(ROLES),$(eval $(call ROLE_RULE,$(r))))

CTL_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard ctl/*.c))
$(CTL_BIN): $(CTL_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# --- tests --------------------------------------------------------------------
$(BUILD)/tests/test_%: $(BUILD)/obj/tests/unit/test_%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# A role's unit test also links that role's modules (all but its main.o).
define ROLE_TEST_RULE
$(BUILD)/tests/test_$(1): $(BUILD)/obj/tests/unit/test_$(1).o $$(filter-out %/main.o,$$($(1)_OBJ)) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS) -lcmocka
endef
$(foreach r,router mam,$(eval $(call ROLE_TEST_RULE,$(r))))

# The fuzz targets' corpora replayed by a plain main() under the normal compiler.
$(BUILD)/obj/tests/fuzz/replay_%.o: tests/fuzz/fuzz_%.c | $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DFUZZ_REPLAY_MAIN -c -o $@ $<
$(BUILD)/tests/replay_%: $(BUILD)/obj/tests/fuzz/replay_%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tools/%: $(BUILD)/obj/tests/tools/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/obj/tests/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# make test: the whole suite, as CI runs it: warnings are errors, sanitizers on.
TEST_SAN ?= address,undefined
test: deps
	$(MAKE) --no-print-directory WERROR=1 SAN=$(TEST_SAN) unit replay integration

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; ASAN_OPTIONS=detect_leaks=1 $$t; done

replay: $(REPLAY_BINS)
	@set -e; for n in $(FUZZ_NAMES); do echo "== replay $$n"; $(BUILD)/tests/replay_$$n tests/fuzz/corpus/$$n; done

integration: all
	MEERKAT_BUILD=$(abspath $(BUILD)) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  /usr/bin/python3 -m pytest -q -x -p no:cacheprovider tests/integration

run: deps all
	$(CTL_BIN) start $(if $(CONFIG),-c $(CONFIG))

bench: deps all $(BENCH_BINS)
	MEERKAT_BUILD=$(abspath $(BUILD)) /usr/bin/python3 tests/bench/run.py

# --- fuzzing with libFuzzer ------------------------------------------------------
FUZZ_DIR := build/fuzz
fuzz: $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)
$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(COMMON_SRC) $(GEN_C)
	@mkdir -p $(dir $@)
	clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Icommon -I$(GEN) $(PKG_CFLAGS) \
	  -o $@ $< $(COMMON_SRC) $(GEN_C) $(PKG_LIBS) -lev -lm -lpthread

# --- install ---------------------------------------------------------------------
install: $(LIB) $(BINS)
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/meerkat $(DESTDIR)$(PREFIX)/bin
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/
	install -m 644 common/*.h $(GEN_H) $(DESTDIR)$(PREFIX)/include/meerkat/
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@PKGS@|$(PKGS)|' deploy/meerkat.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/meerkat.pc

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
