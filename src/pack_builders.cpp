/*-------------------------------------------------------------------------
 * pack_builders.cpp
 *		Context packs of code others own, built off the worker's loop by short-lived background workers.
 *
 * A replacement pack function, or the FHIR pack over a hospital's source, is code the worker does not control:
 * however slow it is, it must not hold back another organization's runs. So the worker hands each organization's
 * claimed runs to a pack builder of its own (a dynamic background worker; one per organization at a time, at most
 * kMaxPackBuilders at once) and goes on with its loop. The builder connects like the worker, becomes its role,
 * builds the packs one run at a time (BuildPackOfRun: as the function's owner, each in its own transaction under
 * diagnosis.context_pack_timeout_ms) and sends each back over a shm_mq as soon as it is built; the worker submits
 * it at once. A builder that cannot start (no free background worker slot) is a local shortage: the worker builds
 * those packs itself, as it did before builders. A builder that stops early or overruns its deadline is ended, and
 * the runs it did not answer go back to the queue with their attempt given back. The pattern is PostgreSQL's own
 * (src/test/modules/test_shm_mq, parallel.c): a DSM segment holding the request and the queue.
 *
 * PostgreSQL regime throughout.
 *-------------------------------------------------------------------------
 */
#include "pg_diagnosis/pg/pack_builders.hpp"
#include "pg_diagnosis/pg/guc.hpp"
#include "pg_diagnosis/pg/worker.hpp"

extern "C" {
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "storage/shm_toc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
}

using pgdiag::ClaimedRun;

#define PACK_BUILDER_MAGIC 0x70646762 /* "pdgb" */
#define KEY_REQUEST 1
#define KEY_QUEUE 2
/* The queue holds this much; a larger pack goes through in pieces (shm_mq). */
#define QUEUE_BYTES (64 * 1024)
/* What a builder may take to start and connect, beyond its packs' own timeouts. */
#define BUILDER_START_MS 10000
/* A builder takes at most this long in all: the runs it holds are running, and their lease
 * (diagnosis.request_timeout_ms plus a minute) was counted from the claim. */
#define BUILDER_PACKS_MS 30000
/* A run waits at most this long for a builder before it goes back to the queue. */
#define MAX_WAIT_MS 20000

/* ---------------------------------------------------------------- what travels in the segment */

typedef struct PackRequest {
	Oid database;
	int n;
	/* n patients, then n NUL-terminated inputs, one after another */
	pg_uuid_t patients[FLEXIBLE_ARRAY_MEMBER];
} PackRequest;

enum PackOutcome : int32 { kBuilt, kFailed, kRetry, kHandedBack };

/* One message per run, in the request's order, followed by the pack or the error (NUL-terminated). */
typedef struct PackMessage {
	int32 index;
	int32 outcome;
} PackMessage;

static const char *
RequestInputs(const PackRequest *request)
{
	return (const char *) &request->patients[request->n];
}

/* ---------------------------------------------------------------- the builder process */

static void
SendPack(shm_mq_handle *queue, int index, const ClaimedRun *run)
{
	PackMessage message = {index, kBuilt};
	const char *text = "";
	shm_mq_iovec parts[2];

	if (run->handed_back || (!run->pack_error && !run->pack))
		message.outcome = kHandedBack;
	else if (run->pack_error) {
		message.outcome = run->pack_transient ? kRetry : kFailed;
		text = run->pack_error;
	} else
		text = run->pack;
	parts[0].data = (const char *) &message;
	parts[0].len = sizeof(message);
	parts[1].data = text;
	parts[1].len = strlen(text) + 1;
	/* The worker is gone (it exited, or ended this builder): nothing is left to do. */
	if (shm_mq_sendv(queue, parts, 2, false, true) != SHM_MQ_SUCCESS)
		proc_exit(0);
}

void
pgdiag_pack_builder_main(Datum main_arg)
{
	dsm_segment *segment;
	shm_toc *toc;
	PackRequest *request;
	shm_mq *mq;
	shm_mq_handle *queue;
	const char *inputs;
	const char *state;
	MemoryContext run_context;
	Size budget_left;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	CurrentResourceOwner = ResourceOwnerCreate(NULL, "pg_diagnosis pack builder");
	segment = dsm_attach(DatumGetUInt32(main_arg));
	if (segment == NULL)
		proc_exit(0); /* the worker ended it before it started */
	dsm_pin_mapping(segment);
	toc = shm_toc_attach(PACK_BUILDER_MAGIC, dsm_segment_address(segment));
	if (toc == NULL)
		elog(ERROR, "pg_diagnosis pack builder: bad segment");
	request = (PackRequest *) shm_toc_lookup(toc, KEY_REQUEST, false);
	mq = (shm_mq *) shm_toc_lookup(toc, KEY_QUEUE, false);
	shm_mq_set_sender(mq, MyProc);
	queue = shm_mq_attach(mq, segment, NULL);

	/* Like the worker: as the bootstrap superuser, then its role before any statement (worker.cpp). */
	BackgroundWorkerInitializeConnectionByOid(request->database, InvalidOid, 0);
	pgdiag::SetUpWorkerSession();
	if (pgdiag::BecomeWorkerRole(&state) != NULL)
		proc_exit(0); /* the worker hands the runs back */
	pgstat_report_appname("pg_diagnosis pack builder");

	run_context = AllocSetContextCreate(TopMemoryContext, "pg_diagnosis pack", ALLOCSET_DEFAULT_SIZES);
	budget_left = pgdiag::PackBudget();
	inputs = RequestInputs(request);
	for (int i = 0; i < request->n; i++) {
		ClaimedRun run = {};

		MemoryContextReset(run_context);
		MemoryContextSwitchTo(run_context);
		run.patient = request->patients[i];
		run.inputs = pstrdup(inputs);
		inputs += strlen(inputs) + 1;
		pgdiag::BuildPackOfRun(&run, &budget_left);
		SendPack(queue, i, &run);
	}
	proc_exit(0);
}

/* ---------------------------------------------------------------- the worker's side */

/* A claimed run waiting for its pack, in a memory context of its own. */
typedef struct PendingRun {
	MemoryContext context;
	ClaimedRun run;
	TimestampTz claimed_at;
} PendingRun;

typedef struct PackBuilder {
	pg_uuid_t organization;
	dsm_segment *segment;
	shm_mq_handle *queue;
	BackgroundWorkerHandle *handle;
	PendingRun **runs;
	int n;
	int answered; /* runs[0 .. answered) are done: the builder answers in order */
	TimestampTz deadline;
} PackBuilder;

static PackBuilder *builders[pgdiag::packs::kMaxPackBuilders];
static int n_builders = 0;
static PendingRun **waiting = NULL;
static int n_waiting = 0;
static int waiting_size = 0;

static void
ForgetRun(PendingRun *pending)
{
	MemoryContextDelete(pending->context);
}

/* Ends a run that gets no pack from a builder: back to the queue, its attempt given back. */
static void
HandBack(PendingRun *pending)
{
	pending->run.handed_back = true;
	pgdiag::DeliverClaimed(&pending->run, 1);
	ForgetRun(pending);
}

static int StartWaitingBuilders(void);

void
pgdiag::packs::Hand(const ClaimedRun *runs, int n)
{
	TimestampTz now;

	if (n == 0)
		return;
	now = GetCurrentTimestamp();

	if (n_waiting + n > waiting_size) {
		waiting_size = Max(64, (n_waiting + n) * 2);
		waiting = waiting ? (PendingRun **) repalloc(waiting, sizeof(PendingRun *) * waiting_size)
		                  : (PendingRun **) MemoryContextAlloc(TopMemoryContext, sizeof(PendingRun *) * waiting_size);
	}
	for (int i = 0; i < n; i++) {
		MemoryContext context =
		    AllocSetContextCreate(TopMemoryContext, "pg_diagnosis run awaiting its pack", ALLOCSET_SMALL_SIZES);
		PendingRun *pending = (PendingRun *) MemoryContextAllocZero(context, sizeof(PendingRun));

		pending->context = context;
		pending->claimed_at = now;
		pgdiag::CopyClaimedRun(context, &runs[i], &pending->run);
		waiting[n_waiting++] = pending;
	}
	(void) StartWaitingBuilders();
}

static bool
HasBuilder(const pg_uuid_t *organization)
{
	for (int i = 0; i < n_builders; i++)
		if (memcmp(&builders[i]->organization, organization, sizeof(pg_uuid_t)) == 0)
			return true;
	return false;
}

/* How many runs one builder takes: as many as fit BUILDER_PACKS_MS at the pack timeout each. */
static int
RunsPerBuilder(void)
{
	return (int) Max(1, BUILDER_PACKS_MS / ((int64) pgdiag_context_pack_timeout_ms + 1000));
}

/* The deadline of a builder of n runs: its start, then each pack's timeout and a second. A pack that ends within
 * its timeout is always answered before it. */
static int64
BuilderAllowanceMs(int n)
{
	return BUILDER_START_MS + (int64) n * ((int64) pgdiag_context_pack_timeout_ms + 1000);
}

int64
pgdiag::packs::MaxPackMs()
{
	return MAX_WAIT_MS + BuilderAllowanceMs(RunsPerBuilder());
}

/* The request and the queue in a new segment, the queue's receiving end attached to this process. */
static dsm_segment *
NewSegment(PendingRun **runs, int n, shm_mq **mq)
{
	Size inputs_size = 0;
	Size request_size;
	shm_toc_estimator estimator;
	dsm_segment *segment;
	shm_toc *toc;
	PackRequest *request;
	char *inputs;

	for (int i = 0; i < n; i++)
		inputs_size += strlen(runs[i]->run.inputs) + 1;
	request_size = offsetof(PackRequest, patients) + sizeof(pg_uuid_t) * n + inputs_size;
	shm_toc_initialize_estimator(&estimator);
	shm_toc_estimate_chunk(&estimator, request_size);
	shm_toc_estimate_chunk(&estimator, QUEUE_BYTES);
	shm_toc_estimate_keys(&estimator, 2);
	segment = dsm_create(shm_toc_estimate(&estimator), DSM_CREATE_NULL_IF_MAXSEGMENTS);
	if (segment == NULL)
		return NULL;
	dsm_pin_mapping(segment);
	toc = shm_toc_create(PACK_BUILDER_MAGIC, dsm_segment_address(segment), shm_toc_estimate(&estimator));
	request = (PackRequest *) shm_toc_allocate(toc, request_size);
	request->database = MyDatabaseId;
	request->n = n;
	inputs = (char *) RequestInputs(request);
	for (int i = 0; i < n; i++) {
		Size len = strlen(runs[i]->run.inputs) + 1;
		request->patients[i] = runs[i]->run.patient;
		memcpy(inputs, runs[i]->run.inputs, len);
		inputs += len;
	}
	shm_toc_insert(toc, KEY_REQUEST, request);
	*mq = shm_mq_create(shm_toc_allocate(toc, QUEUE_BYTES), QUEUE_BYTES);
	shm_toc_insert(toc, KEY_QUEUE, *mq);
	shm_mq_set_receiver(*mq, MyProc);
	return segment;
}

/* Starts a builder for runs (all of one organization); false when no background worker could start. */
static bool
StartBuilder(PendingRun **runs, int n)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	PackBuilder *builder;
	shm_mq *mq;
	dsm_segment *segment = NewSegment(runs, n, &mq);
	MemoryContext old;

	if (segment == NULL)
		return false;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_diagnosis");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "pgdiag_pack_builder_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_diagnosis pack builder");
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_diagnosis pack builder");
	worker.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(segment));
	worker.bgw_notify_pid = MyProcPid; /* its start and exit set this process's latch */
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (!RegisterDynamicBackgroundWorker(&worker, &handle)) {
		MemoryContextSwitchTo(old);
		dsm_detach(segment);
		return false;
	}
	builder = (PackBuilder *) palloc0(sizeof(PackBuilder));
	builder->organization = runs[0]->run.organization;
	builder->segment = segment;
	builder->handle = handle;
	/* With the handle, a builder that never starts reads as detached instead of leaving the worker waiting. */
	builder->queue = shm_mq_attach(mq, segment, handle);
	builder->runs = (PendingRun **) palloc(sizeof(PendingRun *) * n);
	memcpy(builder->runs, runs, sizeof(PendingRun *) * n);
	builder->n = n;
	builder->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), BuilderAllowanceMs(n));
	MemoryContextSwitchTo(old);
	builders[n_builders++] = builder;
	return true;
}

/* No builder could start (a local shortage): the worker builds the packs itself, one run at a time. */
static void
BuildHere(PendingRun **runs, int n)
{
	Size budget_left = pgdiag::PackBudget();

	for (int i = 0; i < n; i++) {
		pgdiag::BuildPackOfRun(&runs[i]->run, &budget_left);
		pgdiag::DeliverClaimed(&runs[i]->run, 1);
		ForgetRun(runs[i]);
	}
}

/* Takes waiting runs of the first organization without a builder (at most RunsPerBuilder); returns how many. */
static int
TakeWaitingOfOneOrganization(PendingRun **taken)
{
	int limit = RunsPerBuilder();
	int n = 0;
	int kept = 0;
	const pg_uuid_t *organization = NULL;

	for (int i = 0; i < n_waiting; i++)
		if (!HasBuilder(&waiting[i]->run.organization)) {
			organization = &waiting[i]->run.organization;
			break;
		}
	if (organization == NULL)
		return 0;
	{
		pg_uuid_t chosen = *organization;
		for (int i = 0; i < n_waiting; i++) {
			if (n < limit && memcmp(&waiting[i]->run.organization, &chosen, sizeof(pg_uuid_t)) == 0)
				taken[n++] = waiting[i];
			else
				waiting[kept++] = waiting[i];
		}
	}
	n_waiting = kept;
	return n;
}

/* Starts builders for waiting organizations while there is room; returns how many runs it built here instead. */
static int
StartWaitingBuilders(void)
{
	PendingRun **taken = (PendingRun **) palloc(sizeof(PendingRun *) * RunsPerBuilder());
	int built_here = 0;

	while (n_builders < pgdiag::packs::kMaxPackBuilders) {
		int n = TakeWaitingOfOneOrganization(taken);
		if (n == 0)
			break;
		if (!StartBuilder(taken, n)) {
			BuildHere(taken, n);
			built_here += n;
		}
	}
	pfree(taken);
	return built_here;
}

/* Runs that waited too long for a builder go back to the queue (their lease counts from the claim); returns how
 * many. */
static int
HandBackOverdueWaiting(TimestampTz now)
{
	int kept = 0;
	int handed_back = n_waiting;

	for (int i = 0; i < n_waiting; i++)
		if (now >= TimestampTzPlusMilliseconds(waiting[i]->claimed_at, MAX_WAIT_MS))
			HandBack(waiting[i]);
		else
			waiting[kept++] = waiting[i];
	n_waiting = kept;
	return handed_back - kept;
}

/* Delivers what the builder sent so far (adding to *delivered); false once it will send nothing more. */
static bool
TakeSentPacks(PackBuilder *builder, int *delivered)
{
	while (builder->answered < builder->n) {
		Size nbytes;
		void *data;
		shm_mq_result result = shm_mq_receive(builder->queue, &nbytes, &data, true);
		PackMessage message;
		ClaimedRun *run;
		char *text;

		if (result == SHM_MQ_WOULD_BLOCK)
			return true;
		if (result != SHM_MQ_SUCCESS)
			return false;
		if (nbytes <= sizeof(message))
			elog(ERROR, "pg_diagnosis: a pack builder sent a message of %zu bytes", nbytes);
		memcpy(&message, data, sizeof(message));
		if (message.index != builder->answered)
			elog(ERROR, "pg_diagnosis: a pack builder answered run %d out of turn", message.index);
		run = &builder->runs[builder->answered]->run;
		text = (char *) data + sizeof(message);
		run->handed_back = message.outcome == kHandedBack;
		run->pack_error = message.outcome == kFailed || message.outcome == kRetry ? text : NULL;
		run->pack_transient = message.outcome == kRetry;
		run->pack = message.outcome == kBuilt ? text : NULL;
		pgdiag::DeliverClaimed(run, 1);
		ForgetRun(builder->runs[builder->answered]);
		builder->answered++;
		(*delivered)++;
	}
	return false;
}

/* The run a builder was building when its deadline passed: the pack did not stop at its statement timeout (it
 * swallowed the cancel, or sat in code that never checks for it). The pack's own failure: an attempt is spent. */
static void
FailOverdue(PendingRun *pending)
{
	pending->run.pack_error = psprintf("its builder was still building it at the builder's deadline, %lld ms after it "
	                                   "started: the pack function did not stop at diagnosis.context_pack_timeout_ms",
	                                   (long long) BuilderAllowanceMs(1));
	pending->run.pack_transient = true;
	pgdiag::DeliverClaimed(&pending->run, 1);
	ForgetRun(pending);
}

/* Ends a builder: stops it if it still runs and, when `deliver`, settles what it did not answer: the run it was
 * building when `overdue` fails this attempt, the others go back unspent. Returns how many it settled. */
static int
EndBuilder(PackBuilder *builder, bool deliver, bool overdue)
{
	int settled = deliver ? builder->n - builder->answered : 0;

	(void) TerminateBackgroundWorker(builder->handle);
	for (int i = builder->answered; i < builder->n; i++)
		if (!deliver)
			ForgetRun(builder->runs[i]);
		else if (overdue && i == builder->answered)
			FailOverdue(builder->runs[i]);
		else
			HandBack(builder->runs[i]);
	shm_mq_detach(builder->queue); /* frees the handle and its buffer of a large message */
	dsm_detach(builder->segment);
	pfree(builder->handle);
	pfree(builder->runs);
	pfree(builder);
	return settled;
}

int
pgdiag::packs::Step()
{
	TimestampTz now;
	int kept = 0;
	int delivered = 0;

	if (n_builders == 0 && n_waiting == 0)
		return 0;
	now = GetCurrentTimestamp();
	for (int i = 0; i < n_builders; i++) {
		PackBuilder *builder = builders[i];
		if (!TakeSentPacks(builder, &delivered))
			delivered += EndBuilder(builder, true, false);
		else if (now >= builder->deadline)
			delivered += EndBuilder(builder, true, true);
		else
			builders[kept++] = builder;
	}
	n_builders = kept;
	delivered += HandBackOverdueWaiting(now);
	delivered += StartWaitingBuilders();
	return delivered;
}

int
pgdiag::packs::Pending()
{
	int n = n_waiting;

	for (int i = 0; i < n_builders; i++)
		n += builders[i]->n - builders[i]->answered;
	return n;
}

long
pgdiag::packs::TimeoutMs()
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz wake = DT_NOEND;

	for (int i = 0; i < n_builders; i++)
		wake = Min(wake, builders[i]->deadline);
	for (int i = 0; i < n_waiting; i++)
		wake = Min(wake, TimestampTzPlusMilliseconds(waiting[i]->claimed_at, MAX_WAIT_MS));
	if (wake == DT_NOEND)
		return -1;
	return wake <= now ? 0 : (long) ((wake - now + 999) / 1000);
}

void
pgdiag::packs::StopAll()
{
	for (int i = 0; i < n_builders; i++)
		EndBuilder(builders[i], false, false);
	n_builders = 0;
	for (int i = 0; i < n_waiting; i++)
		ForgetRun(waiting[i]);
	n_waiting = 0;
}
