"""Every Redis key and stream name, in one place.

The layout (``{...}`` is a Redis Cluster hash tag: every key of one profile shares its
canonical id's tag, every partition stream its own)::

    cdp:events:{p<N>}                    stream, partition N of the ingest firehose
    cdp:lease:{p<N>}                     string, worker id owning partition N (PX lease)
    cdp:dedup:{p<N>}:<bucket>:<shard>    hash, eventId -> 1, the ids applied before dedup
                                         moved into the profiles (read only, until it
                                         expires); shard = crc32(eventId) % dedup-shards
    cdp:dedup:{p<N>}:<bucket>            hash, the same before sharding (read only, until
                                         it expires)
    cdp:events:dropped                   stream, events past the grace period + reason
    cdp:events:dead                      stream, events the apply script failed on
    {cdp:events:dropped}:recorded        zset, "<partition>:<entry id>:<digest>" -> ms:
    {cdp:events:dead}:recorded           the records written (in their stream's slot),
                                         so a record is written once (kept dedup-ttl)
    cdp:replayed:<dropped|dead>:{p<N>}   zset, record id -> its ms: records replayed to
                                         partition N (in its stream's slot)
    cdp:replayed:<dropped|dead>          zset, the same before the marks were per
                                         partition (read, never written)
    cdp:workers                          zset, worker id -> heartbeat expiry (ms)
    cdp:metrics:{p<N>}                   hash, counter name -> value, partition N's share
                                         (summed over the partitions on read)
    cdp:metrics                          hash, the same counters before they were per
                                         partition (read, added to the sum, never written)
    cdp:metrics:buffered                 hash, worker id -> events in its buffer
    cdp:metrics:hist:<name>              hash, a worker-observed histogram summed over the
                                         workers (apply-batch, freshness, pipeline-
                                         latency; lua/histogram_add-1.lua): bucket upper
                                         bound ("0.005", "+Inf") -> observations in it
                                         (not cumulative), sum, count
    cdp:metrics:tail                     hash, the tail counter (cdp.metrics_tail): the
                                         cursor of each stream it counts (cursor:<stream>)
                                         and its counts: enter:<segment>, exit:<segment>,
                                         merged, refused:<reason>
    cdp:metrics:history                  stream, field s: one Sample (JSON) of the totals
                                         every metrics-sample-interval (MAXLEN ~ 400)
    cdp:seq:profile                      string, last canonical profile number issued
    cdp:identifier:{<type>:<value>}      string, identifier -> canonical id
    cdp:profile:{<cid>}                  hash, firstSeen, lastSeen, createdAt (ISO-8601),
                                         lastSeenMs, user, users/emails/anons (counts),
                                         merges, version (bumped by every change),
                                         evaluatedMs (last accepted segment evaluation),
                                         evaluations (how many were accepted),
                                         seenFrom / seenTo (the oldest dedup bucket its
                                         seen hash may hold / the one its expiry is for);
                                         for a merged-away id only mergedInto, mergedAt,
                                         mergeEventId (+ mergeState when merged across
                                         slots: its journal, frozen -> absorbed ->
                                         repointed -> done; cdp/merge.py);
                                         while an erasure job runs, only erasedBy (the
                                         job), erasedIdentifiers, erasedExits
    cdp:profile:{<cid>}:traits           hash, trait -> {"v":..,"ts":..,"eventId":..}
    cdp:profile:{<cid>}:identifiers      set of typed identifiers (user:, anon:, email:)
    cdp:profile:{<cid>}:counters         hash, event name -> oldest bucket it holds
    cdp:profile:{<cid>}:merged           set of canonical ids merged into this one
    cdp:profile:{<cid>}:counter:<name>   zset, bucket start (13-digit ms) -> count
    cdp:profile:{<cid>}:segments         hash, segment -> {"in", "n" (transitions), "since"}
    cdp:profile:{<cid>}:seen             hash, eventId -> dedup bucket (now // dedup-ttl):
                                         the events applied to it, honoured through the
                                         next bucket (pruned when touched; expires)
    cdp:profile:{<cid>}:outbox           list of JSON records owed to streams of other
                                         slots (segment events), relayed in order
                                         (lua/includes/outbox.lua; cluster protocol)
    cdp:profile:{<cid>}:outbox:relay     string, owner of the relay of that outbox (PX
                                         lease: one relay at a time per profile)
    cdp:merges:open                      zset, loser cid -> ms the cross-slot merge was
                                         started (its journal: the loser's mergeState)
    cdp:profiles                         zset, live canonical id -> its number
    cdp:merges                           stream, merges and refused links (guard rails)
    cdp:segments                         hash, custom segment name -> definition (JSON)
    cdp:segments:version                 string, bumped on every definition change
    cdp:segments:due                     zset, canonical id -> when to re-evaluate (ms)
    cdp:segment:{<name>}:members         zset, canonical id -> its number (the members)
    cdp:segment:{<name>}:backfill        hash, state, cursor, scanned, total
    cdp:backfills                        set of segments whose backfill is running
    cdp:lease:sweeper                    string, worker id running the due-time sweeper
    cdp:webhooks                         hash, subscription id -> {url, secret, segments}
    cdp:webhook:{<id>}                   hash, delivery state: cursor, attempts, nextAt...
                                             and the counts of /metrics: delivered, retries, dead
    cdp:webhooks:dead                    stream, deliveries given up after retry-for
    {cdp:webhooks:dead}:recorded         zset, "<subscription id>:<entry id>" -> ms, the
                                         give-ups recorded (kept a day)
    {cdp:segment-events}:recorded        zset, segment eventId -> ms, the outbox entries
                                         relayed to cdp:segment-events (kept dedup-ttl)
    cdp:lease:webhooks                   string, worker id running the webhook dispatcher
    cdp:segment-events                   stream, segment ENTER/EXIT events
    cdp:suppressed                       set of identifiers of erased people (discarded)
    cdp:audit                            stream, erasures: who, when, which canonical id
    cdp:rejections                       stream, 4xx answers of the ingest routes: at,
                                         method, route, status, reason, source, body
                                         (cut at 2 KiB), truncated (MAXLEN ~
                                         rejections-maxlen; the console reads it)
    cdp:debugger                         stream, field t: a JSON array of the events an
                                         API process stored while the flag below was
                                         set, one entry per flush: [partition, entry id,
                                         index in the entry, event] (MAXLEN ~ about
                                         debugger-maxlen events; cdp.debugger)
    cdp:debugger:watch                   string, "1" while the console's debugger is open
                                         (PX 30 s, set by each of its calls)
    cdp:job:{<id>}                       hash, state of an erasure job (kept 7 days): its
                                         step, canonical id, counts; mergedFrom
    cdp:job:{<id>}:identifiers           set, the erased identifiers, until the job is done
                                         (its purge reads them)
    cdp:job:{<id>}:lease                 string, who runs the job now (PX lease)
    cdp:erasures:open                    zset, job id -> ms it started: erasure jobs not
                                         done yet (the sweeper resumes them)
    cdp:clock                            string, the test clock (CDP_CLOCK=redis only)

Nothing outside this module builds a key with an f-string.
"""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = "cdp"

GROUP = "cdp-workers"
DROPPED = f"{PREFIX}:events:dropped"
DEAD = f"{PREFIX}:events:dead"
WORKERS = f"{PREFIX}:workers"
METRICS = f"{PREFIX}:metrics"  # legacy: counters before per-partition keys (read only)
METRICS_BUFFERED = f"{PREFIX}:metrics:buffered"
METRICS_TAIL = f"{PREFIX}:metrics:tail"
METRICS_HISTORY = f"{PREFIX}:metrics:history"
PROFILE_SEQ = f"{PREFIX}:seq:profile"
MERGES = f"{PREFIX}:merges"
SEGMENT_EVENTS = f"{PREFIX}:segment-events"
SEGMENTS = f"{PREFIX}:segments"
SEGMENTS_VERSION = f"{PREFIX}:segments:version"
SEGMENTS_DUE = f"{PREFIX}:segments:due"
BACKFILLS = f"{PREFIX}:backfills"
PROFILES = f"{PREFIX}:profiles"
SWEEPER_LEASE = f"{PREFIX}:lease:sweeper"
WEBHOOKS = f"{PREFIX}:webhooks"
WEBHOOKS_DEAD = f"{PREFIX}:webhooks:dead"
WEBHOOKS_LEASE = f"{PREFIX}:lease:webhooks"
CLOCK = f"{PREFIX}:clock"
SUPPRESSED = f"{PREFIX}:suppressed"
MERGES_OPEN = f"{PREFIX}:merges:open"
AUDIT = f"{PREFIX}:audit"
REJECTIONS = f"{PREFIX}:rejections"
DEBUGGER = f"{PREFIX}:debugger"
DEBUGGER_WATCH = f"{PREFIX}:debugger:watch"
ERASURES_OPEN = f"{PREFIX}:erasures:open"

# Prefixes the Lua scripts complete with a canonical id or identifier (they cannot
# import this module); kept next to the functions that build the same names.
IDENTIFIER_PREFIX = f"{PREFIX}:identifier:"
PROFILE_PREFIX = f"{PREFIX}:profile:"

# Counter name under which every TRACK event is counted, whatever its name.
ALL_TRACK = "$track"
# Counter of all activity (every event, whatever its type): "returned" rules read it.
SEEN = "$seen"


def partition_tag(partition: int) -> str:
    return f"{{p{partition}}}"


def stream(partition: int) -> str:
    return f"{PREFIX}:events:{partition_tag(partition)}"


def metrics(partition: int) -> str:
    """Partition N's share of the counters, in its slot: no key is written by every call."""
    return f"{PREFIX}:metrics:{partition_tag(partition)}"


def histogram(name: str) -> str:
    """A histogram the workers observe (``apply-batch``, ``freshness``,
    ``pipeline-latency``), summed over them."""
    return f"{PREFIX}:metrics:hist:{name}"


def lease(partition: int) -> str:
    return f"{PREFIX}:lease:{partition_tag(partition)}"


def record_marks(record_stream: str) -> str:
    """The marks of the records written to a record stream (``cdp:events:dropped``,
    ``dead``, ``cdp:webhooks:dead``): the hash tag is the stream's whole name, so both
    are one slot (``cdp.streams.add_once``)."""
    return f"{{{record_stream}}}:recorded"


def replayed(source: str, partition: int) -> str:
    """Marks of the records of ``cdp:events:<source>`` already replayed to partition N
    (cdp.replay): in the partition stream's slot, so one script marks and publishes."""
    return f"{PREFIX}:replayed:{source}:{partition_tag(partition)}"


def replayed_legacy(source: str) -> str:
    """The marks of before they were per partition (read only, while they exist)."""
    return f"{PREFIX}:replayed:{source}"


def dedup(partition: int, bucket: int) -> str:
    """The unsharded dedup hash of a bucket, as written before dedup-shards (read only)."""
    return f"{PREFIX}:dedup:{partition_tag(partition)}:{bucket}"


def dedup_shard(partition: int, bucket: int, shard: int) -> str:
    """One of the dedup-shards hashes of a partition's dedup bucket, as written before
    dedup moved into the profiles (read only)."""
    return f"{PREFIX}:dedup:{partition_tag(partition)}:{bucket}:{shard}"


def identifier(typed_id: str) -> str:
    return f"{IDENTIFIER_PREFIX}{{{typed_id}}}"


def profile(cid: str) -> str:
    return f"{PROFILE_PREFIX}{{{cid}}}"


def traits(cid: str) -> str:
    return profile(cid) + ":traits"


def identifiers(cid: str) -> str:
    return profile(cid) + ":identifiers"


def merged(cid: str) -> str:
    return profile(cid) + ":merged"


def counters(cid: str) -> str:
    return profile(cid) + ":counters"


def counter(cid: str, name: str) -> str:
    return profile(cid) + ":counter:" + name


def profile_segments(cid: str) -> str:
    return profile(cid) + ":segments"


def seen(cid: str) -> str:
    """The eventIds applied to profile ``cid`` -> the dedup bucket of their record."""
    return profile(cid) + ":seen"


def outbox(cid: str) -> str:
    """Records profile ``cid``'s scripts owe to streams of other slots (cluster)."""
    return profile(cid) + ":outbox"


def outbox_relay(cid: str) -> str:
    """The lease of the relay of profile ``cid``'s outbox (cdp.segments.outbox)."""
    return outbox(cid) + ":relay"


def profile_keys(cid: str, counter_names: Iterable[str] = ()) -> list[str]:
    """Every key of profile ``cid`` (one slot): the fixed ones, then the counter zsets of
    ``counter_names`` (the names its counters hash holds)."""
    return [
        profile(cid),
        traits(cid),
        identifiers(cid),
        counters(cid),
        merged(cid),
        profile_segments(cid),
        seen(cid),
        outbox(cid),
        *(counter(cid, name) for name in counter_names),
    ]


# SCAN pattern of every profile's seen hash (the fault suite reads them back).
SEEN_PATTERN = f"{PROFILE_PREFIX}*:seen"


def segment_members(name: str) -> str:
    return f"{PREFIX}:segment:{{{name}}}:members"


def segment_backfill(name: str) -> str:
    return f"{PREFIX}:segment:{{{name}}}:backfill"


def webhook_state(subscription_id: str) -> str:
    return f"{PREFIX}:webhook:{{{subscription_id}}}"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{{{job_id}}}"


def job_identifiers(job_id: str) -> str:
    """The identifiers an erasure job suppressed (personal data: deleted when done)."""
    return job(job_id) + ":identifiers"


def job_lease(job_id: str) -> str:
    return job(job_id) + ":lease"
