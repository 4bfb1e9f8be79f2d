/*
 * cpp_only.hpp: included last by every PostgreSQL-free core file.
 *
 * The core (MCP client, SSE parser, result validation, retry policy) must build and be tested without
 * PostgreSQL, and must never see postgres.h: its exceptions and RAII objects live only on its side of the
 * boundary. Including a PostgreSQL header before this one is a build error.
 */
#pragma once

#if defined(POSTGRES_H)
static_assert(false, "No PostgreSQL header may be included in a pg_diagnosis core file.");
#endif
