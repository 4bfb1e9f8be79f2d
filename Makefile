# pg_diagnosis: PGXS build of the extension (PostgreSQL glue in src/, the PostgreSQL-free core in src/core/).
EXTENSION    = pg_diagnosis
EXTVERSION   = $(shell grep default_version $(EXTENSION).control | sed -e "s/default_version[[:space:]]*=[[:space:]]*'\([^']*\)'/\1/")
MODULE_big   = pg_diagnosis
PGFILEDESC   = "pg_diagnosis - durable, audited diagnosis runs over MCP"

SRCS         = $(wildcard src/*.cpp) $(wildcard src/core/*.cpp)
OBJS         = $(SRCS:.cpp=.o)

# sql/pg_diagnosis.sql is the only hand-edited install script (built into the current version's); each release
# adds sql/pg_diagnosis--A--B.sql, and the install scripts of released versions stay exactly as released
# (sql/pg_diagnosis--0.1.0.sql), so CREATE EXTENSION ... VERSION and every ALTER EXTENSION ... UPDATE keep working.
DATA_built   = sql/$(EXTENSION)--$(EXTVERSION).sql
DATA         = $(filter-out $(DATA_built), $(wildcard sql/$(EXTENSION)--*.sql))

# pg_regress suites in sql/ and expected/, run on a throwaway cluster that preloads the library.
REGRESS      = $(shell sed -n 's/^test: *//p' test/regress_schedule 2>/dev/null)
# REGRESS_OUT: where results, diffs and the temporary instance go (the test command points it at a directory the
# unprivileged `postgres` user owns).
REGRESS_OUT ?= .
REGRESS_OPTS = --temp-config=test/regress.conf --temp-instance=$(REGRESS_OUT)/tmp_check --outputdir=$(REGRESS_OUT) --load-extension=$(EXTENSION)
ISOLATION    = $(basename $(notdir $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --temp-config=test/regress.conf --temp-instance=$(REGRESS_OUT)/tmp_check_iso --inputdir=test/isolation --outputdir=$(REGRESS_OUT)/isolation --load-extension=$(EXTENSION)
# `make installcheck` brings its own throwaway instance (--temp-instance) that preloads the library: the
# worker needs shared_preload_libraries, which an existing server may not have.
EXTRA_CLEAN  = tmp_check tmp_check_iso tmp_check_update output_iso output_update results regression.diffs regression.out $(DATA_built) $(OBJS:.o=.d)

PG_CONFIG   ?= pg_config
# The core is C++ without JIT value: no LLVM bitcode (Debian's PGXS would otherwise need clang-14 for it).
override with_llvm = no

PG_CPPFLAGS  = -Iinclude -MMD -MP -DPGDIAG_EXTVERSION=\"$(EXTVERSION)\"
PG_CXXFLAGS  = -std=c++17 -Wno-register -fexceptions -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK  += -lcurl -lcrypto -lstdc++
# SANITIZE: extra compile and link flags, e.g. "-fsanitize=address,undefined" (scripts/sanitize.sh builds a copy
# of the tree with them; the library then needs the sanitizer runtimes loaded into the server).
SANITIZE    ?=
PG_CXXFLAGS += $(SANITIZE)
SHLIB_LINK  += $(SANITIZE)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Server headers are not ours to warn about.
override CPPFLAGS := $(patsubst -I%server,-isystem %server,$(CPPFLAGS))

$(DATA_built): sql/$(EXTENSION).sql
	cp $< $@

all: $(DATA_built)

# installcheck-update: the same pg_regress suites on a database created at 0.1.0 and updated (sql/update_setup.sql
# instead of --load-extension), so every update script is held to the fresh install's expected output.
installcheck-update:
	$(pg_regress_installcheck) --temp-config=test/regress.conf --temp-instance=$(REGRESS_OUT)/tmp_check_update \
		--outputdir=$(REGRESS_OUT)/output_update update_setup $(REGRESS)

.PHONY: installcheck-update format format-check

# .clang-format matches the tree; the test command runs the check (scripts/format_check.sh, clang-format-14).
format:
	bash scripts/format_check.sh --fix

format-check:
	bash scripts/format_check.sh

-include $(OBJS:.o=.d)
