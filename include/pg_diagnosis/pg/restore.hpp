/*
 * restore.hpp: recognises a restore of the diagnosis schema's rows (pg_restore, or psql reading a pg_dump script).
 */
#pragma once

extern "C" {
#include "postgres.h"
}

namespace pgdiag {
/* True when a superuser's top-level statement is COPY <relid> FROM, which is how pg_dump writes table data. */
bool RestoringInto(Oid relid);
} // namespace pgdiag
