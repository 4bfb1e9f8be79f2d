/*
 * mcp_client.hpp: a non-blocking MCP Streamable HTTP client on libcurl's multi socket interface.
 *
 * The owner (the background worker) never blocks inside the client. It waits on EventFd() becoming
 * readable (an epoll descriptor that aggregates every socket libcurl asked to watch) together with its own
 * latch, for at most TimeoutMs(); then it calls Drive(), which performs whatever I/O and timers are due, and
 * collects finished calls with TakeOutcomes(), progress notifications with TakeProgress() and the tasks the server
 * created with TakeTasks().
 *
 * Dual-era: the endpoint is probed with the current revision (2026-07-28: server/discover, per-request _meta, no
 * sessions) and falls back to the initialize handshake (2025-11-25, accepting 2025-03-26 and 2025-06-18) when the
 * server is legacy; the era is cached per origin. In the legacy era one session per endpoint is shared by every call;
 * on a 404 to a request that carried Mcp-Session-Id the session is re-initialized once and the call retried once.
 * Calls submitted before the endpoint is ready wait for it inside the client. When the server offers tasks for the
 * tool, a call becomes a task that is polled with tasks/get. No exception escapes a public member except
 * std::bad_alloc; no exception or error ever crosses a libcurl callback.
 *
 * The facade over its units: http_transport (libcurl + epoll), mcp_session (era, version and session: the endpoint
 * set-up), mcp_tasks (task polling), mcp_protocol (JSON-RPC messages and outcome classification); the call state
 * machine is mcp_client.cpp. The types the facade and the units share are in mcp_types.hpp.
 */
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pg_diagnosis/core/mcp_types.hpp"

namespace pgdiag {

class SchemaRegistry;

class McpClient {
public:
	/* `schemas` must outlive the client; results are validated against schemas->Find(schema_version). */
	static std::unique_ptr<McpClient> Create(const ClientConfig &config, const SchemaRegistry *schemas);
	virtual ~McpClient() = default;

	/* Applies to calls submitted from now on; a changed url or token drops the session. */
	virtual void Configure(const ClientConfig &config) = 0;

	/* Sets the endpoint up (probe, initialize, tools/list) without a call; Endpoint() tells how it went. */
	virtual void Connect() = 0;

	/* Starts a call; false when max_inflight calls are already in flight. */
	virtual bool Submit(CallRequest request) = 0;
	virtual size_t InFlight() const = 0;

	/* A descriptor that is readable when Drive() has socket work to do. Stable for the client's life. */
	virtual int EventFd() const = 0;
	/* Milliseconds until Drive() must run for timers even without socket events; -1 when none is pending. */
	virtual long TimeoutMs() const = 0;
	/* Performs due socket I/O and timers without blocking. */
	virtual void Drive() = 0;

	virtual std::vector<CallProgress> TakeProgress() = 0;
	virtual std::vector<CallOutcome> TakeOutcomes() = 0;
	/* Tasks created since the last call (each once), to be committed by the owner. */
	virtual std::vector<CallTask> TakeTasks() = 0;

	/* Gives up one call: tasks/cancel for a task-backed call, notifications/cancelled (legacy) or closing the
	 * stream (modern) otherwise. Its outcome arrives with cancelled = true. Unknown tags are ignored. */
	virtual void Cancel(uint64_t tag) = 0;

	virtual EndpointInfo Endpoint() const = 0;

	/* Orderly end: calls in flight end without an outcome (notifications/cancelled for legacy direct calls; tasks
	 * are left running so a restart resumes them), then the legacy session is DELETEd. Takes at most
	 * shutdown_timeout_ms; the client is idle afterwards. */
	virtual void Shutdown() = 0;

	/* Ends every call in flight at once without an outcome (shutdown); returns their tags. */
	virtual std::vector<uint64_t> AbortAll() = 0;
};

} // namespace pgdiag
