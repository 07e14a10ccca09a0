/* common/cfg.h - the whole cluster's configuration: one YAML file, or the embedded defaults. */
#ifndef MK_COMMON_CFG_H
#define MK_COMMON_CFG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cfg_role {
    CFG_ROLE_C2S = 0,
    CFG_ROLE_ROUTER,
    CFG_ROLE_MAM,
    CFG_ROLE_PUSHER,
    CFG_ROLE_GD,
    CFG_ROLE_COUNT,
};

/* One process of the cluster. */
struct cfg_proc {
    char *id;              /* "<role>.<index>", e.g. "c2s.0" */
    enum cfg_role role;
    unsigned index;
    char *bus;             /* its inbox endpoint, e.g. "tcp://127.0.0.1:7100" or "ipc://var/run/c2s.0" */
    char *metrics_host;    /* where /metrics, /healthz, /readyz listen */
    int metrics_port;      /* 0 = no metrics listener */
};

struct cfg_listener {
    char *host;            /* default "0.0.0.0" (c2s) */
    int port;              /* 0 = disabled */
    bool tls;              /* c2s_ws only: wss (default true, the tls cert) or plain ws behind a TLS proxy */
    char **origins;        /* c2s_ws only: allowed browser Origins (empty: any) */
    size_t norigins;
};

struct cfg_storage {
    char *driver;          /* "sqlite" (default) or "pgsql" */
    char *sqlite_path;     /* default "<data_dir>/meerkat.db" */
    int sqlite_checkpoint_pages; /* WAL pages before a checkpoint (on a thread of its own); 0 = 8192 */
    char *pg_host;         /* default "127.0.0.1" */
    int pg_port;           /* default 5432 */
    char *pg_dbname;       /* default "meerkat" */
    char *pg_user;         /* default "meerkat" */
    char *pg_password;     /* read from pg_password_file or the env variable pg_password_env; never in the YAML */
    char *pg_password_file;/* file holding the password (trailing newline dropped), or NULL */
    char *pg_password_env; /* name of the environment variable holding it, or NULL */
    char *pg_sslmode;      /* default "prefer"; "verify-full" in production */
    char *pg_sslrootcert;  /* CA file, or NULL */
    int pool_size;         /* connections per process, default 2 */
};

struct cfg_limits {
    size_t max_stanza_bytes;       /* default 65536 */
    unsigned max_depth;            /* default 64 */
    unsigned max_attrs;            /* default 64 */
    size_t max_preauth_bytes;      /* default 8192: bytes of one stanza before authentication */
    unsigned max_sessions_per_user;/* default 10 */
    unsigned shaper_bytes_per_sec; /* per-connection read rate, default 0 = unlimited */
    unsigned idle_timeout_sec;     /* close a silent stream after this, default 600 */
    unsigned auth_timeout_sec;     /* time to authenticate, default 30 */
    unsigned auth_fail_per_ip;     /* wrong passwords from one address (IPv6: its /64) before its logins wait, default 10 */
    unsigned auth_fail_per_user;   /* wrong passwords for one account from one address before that pair's logins wait, default 5 */
    unsigned auth_fail_halflife_sec; /* those counts halve in this time, default 300 */
    unsigned register_per_ip;      /* in-band registrations per address per register_interval_sec, default 1; 0 = unlimited */
    unsigned register_interval_sec;/* default 600 (ejabberd's registration_timeout) */
    unsigned max_preauth_per_ip;   /* c2s: connections of one address (IPv6: its /64) not yet authenticated,
                                    * per process, default 64; past it a new one is closed; 0 = unlimited */
    unsigned offline_max;          /* offline messages per user, default 100 */
    unsigned bus_hwm;              /* ZeroMQ high-water mark per peer, default 100000 */
    size_t max_output_bytes;       /* c2s: output a client has not read yet, default 8 MiB; past it, a stream error */
    unsigned max_store_queue;      /* queries waiting for a store connection, default 10000; past it, refused */
    unsigned max_pending_routes;   /* c2s: Routes to one router shard not yet acknowledged, default 100000;
                                    * past it a client's stanza is answered wait/resource-constraint */
    unsigned mam_max_pending_rows; /* mam: archive rows received and not yet committed, default 100000; past
                                    * it new writes are refused (counted) and their senders re-send them */
    unsigned max_held_presence;    /* c2s: client presence held while the session's roster loads, default 128;
                                    * past it the stream ends with <policy-violation/> */
    unsigned max_roster_items;     /* items in one roster, default 1000; a change adding one past it is refused */
    unsigned max_block_items;      /* JIDs on one block list, default 1000; a block past it is refused */
    unsigned custody_max_per_c2s;  /* router: message Delivers kept per c2s until it reports them done, default
                                    * 100000; past it the oldest copy is forgotten (counted) */
    unsigned custody_timeout;      /* seconds without a word from a c2s after which a router routes the copies
                                    * it keeps for it again (a c2s removed or down for good), default 120;
                                    * 0 = never. Every c2s says it is alive to every router a third of it. */
    unsigned custody_report_ms;    /* c2s: longest wait of a done custody id for a bus frame to its router,
                                    * default 100 (then it gets a frame of its own) */
    size_t bus_max_frame_bytes;    /* largest bus frame an inbox takes (ZMQ_MAXMSGSIZE), default 8 MiB;
                                    * at least 2 x max_stanza_bytes + 64 KiB (checked) */
};

struct cfg_bus {
    bool curve;                    /* ZeroMQ CURVE on every bus socket, default true */
    char *keys_dir;                /* holds bus_curve.key (0600), default <data_dir> */
};

struct cfg_modules {
    bool register_enabled;         /* XEP-0077 in-band registration, default true */
    bool anonymous;                /* SASL ANONYMOUS, default false */
    bool mam_enabled;              /* default true */
    unsigned mam_batch_rows;       /* flush at N rows, default 256 */
    unsigned mam_batch_ms;         /* or after T ms, default 5 */
    unsigned mam_max_page;         /* RSM max cap, default 100 */
    /* XEP-0198 stream management (c2s/sm.c) */
    bool sm_enabled;               /* advertised and served, default true */
    unsigned sm_resume_timeout;    /* seconds a detached resumable session is kept, default 300;
                                    * 0: no resumption (<enable resume='true'/> gets no id) */
    unsigned sm_max_unacked;       /* stanzas sent and not acknowledged per session, default 500;
                                    * past it the stream ends with <resource-constraint/> */
    bool inbox_enabled;            /* MongooseIM's inbox (c2s/inbox.c), default false: two store writes per message */
    /* XEP-0045 group chat (router/muc.c): rooms are bare JIDs at the MUC service of each
     * hosted domain and live on router[shard(room)], in memory (temporary rooms). */
    bool muc_enabled;              /* default false */
    char *muc_host;                /* the service's domain; "@HOST@" stands for each hosted domain,
                                    * default "conference.@HOST@" */
    unsigned muc_max_rooms_per_user; /* rooms one user may have created and that still exist (per router
                                    * shard), default 10; past it a creation is refused <not-allowed/> */
    unsigned muc_max_occupants;    /* occupants per room, default 200; past it <service-unavailable/> */
    unsigned muc_max_nick_bytes;   /* bytes of a nickname, default 128; past it <not-acceptable/> */
    unsigned muc_history_size;     /* groupchat messages a room keeps for joiners, default 20 (0: none) */
    /* XEP-0163 PEP (c2s/pep.c) */
    bool pep_enabled;              /* advertised and served, default true */
    size_t pep_max_item_bytes;     /* an item's payload, serialized, default 60 KiB (under the default
                                    * limits.max_stanza_bytes, so that this limit is the one met) */
    unsigned pep_max_nodes;        /* nodes per account, default 100 */
    unsigned pep_max_items;        /* the largest pubsub#max_items of a node ("max"), default 256 */
};

/* Event pusher (pusher/, issue 12). The kinds are Mk__PushEventKind values
 * (proto/meerkat.proto); a backend's `events` is a mask of CFG_PUSH_BIT(kind). */
#define CFG_PUSH_BIT(kind) (1u << (unsigned)(kind))

enum cfg_push_type {
    CFG_PUSH_HTTP = 0,     /* webhook: MongooseIM's form POST, or JSON signed with HMAC-SHA256 */
    CFG_PUSH_SNS,          /* Amazon SNS Publish, SigV4 */
    CFG_PUSH_XEP0357,      /* XEP-0357 publish to the user's app servers; MongoosePush for virtual hosts */
};

enum cfg_push_format {
    CFG_PUSH_FORM = 0,     /* author, server, receiver, message (MongooseIM 2.2.0's encoding) */
    CFG_PUSH_JSON,         /* every field of the event, X-Meerkat-Signature header */
};

/* One entry of pusher.backends. */
struct cfg_push_backend {
    char *name;                    /* unique; the `backend` label of the push metrics (default: the type's name + index) */
    enum cfg_push_type type;
    char **domains;                /* hosted domains whose events it takes; default (none given): every one */
    size_t ndomains;
    uint32_t events;               /* CFG_PUSH_BIT per kind; default by type: http form = SENT,
                                    * http json = every kind, sns = SENT|GROUPCHAT|ONLINE|OFFLINE,
                                    * xep0357 = DELIVERED|STORED|ONLINE (only `unavailable` messages
                                    * publish; ONLINE resets the user's message-count) */
    /* HTTP transport, every type */
    unsigned connect_timeout_ms;   /* default 2000 */
    unsigned timeout_ms;           /* whole request, default 5000 */
    unsigned max_connections;      /* keep-alive connections to the backend, default 16 */
    unsigned pipeline;             /* requests in flight per connection (HTTP/1.1 pipelining, http:// to an
                                    * address only), 1: none; default 0: automatic (probed, then 8 or 1) */
    bool tls_verify;               /* verify the peer's certificate and name, default true */
    char *ca_file;                 /* CA bundle for tls_verify, NULL = the system's */
    /* Retries: connection errors, timeouts, 5xx and 429 (Retry-After honoured) wait
     * retry_base_ms x 2^n with full jitter, at most retry_max_ms, for at most
     * max_retries retries and deadline_sec since the event reached the pusher. */
    unsigned max_retries;          /* default 8 */
    unsigned retry_base_ms;        /* default 100 */
    unsigned retry_max_ms;         /* default 30000 */
    unsigned deadline_sec;         /* default 300 */
    /* http */
    char *url;                     /* required: http(s)://host[:port]/path, used as written */
    enum cfg_push_format format;   /* default form */
    char *secret;                  /* json: HMAC key, read from secret_file or secret_env (required for json) */
    char *secret_file;
    char *secret_env;
    /* sns */
    char *sns_region;              /* required, e.g. eu-west-1 (the ARN's region) */
    char *sns_account_id;          /* required, 12 digits */
    char *sns_endpoint;            /* default https://sns.<region>.amazonaws.com/ */
    char *sns_signing_region;      /* default sns_region */
    char *sns_presence_topic;      /* topic names; NULL = that kind is not published */
    char *sns_pm_topic;
    char *sns_muc_topic;
    char *aws_access_key_id;       /* from access_key_id_file, or the env variable access_key_id_env
                                    * (default AWS_ACCESS_KEY_ID); required */
    char *aws_access_key_id_file;
    char *aws_access_key_id_env;
    char *aws_secret_access_key;   /* same, secret_access_key_file / _env (default AWS_SECRET_ACCESS_KEY) */
    char *aws_secret_access_key_file;
    char *aws_secret_access_key_env;
    char *aws_session_token;       /* optional: session_token_file / _env (default AWS_SESSION_TOKEN) */
    char *aws_session_token_file;
    char *aws_session_token_env;
    /* xep0357 */
    char **virtual_hosts;          /* pubsub JIDs (domains) MongoosePush serves: no IQ, a REST call */
    size_t nvirtual_hosts;
    char *mongoosepush_url;        /* base URL, e.g. https://127.0.0.1:8443 (required with virtual_hosts) */
    char *mongoosepush_api;        /* "v3" (default) or "v2" */
};

struct cfg_pusher {
    struct cfg_push_backend *backends;
    size_t nbackends;
    unsigned max_pending_events;   /* events an emitter keeps unacknowledged per pusher, default 100000;
                                    * past it an event is dropped and counted (chat never waits) */
};

/* An external component (XEP-0114) allowed on the component listener. */
struct cfg_component {
    char *domain;                  /* its JID (a subdomain or any domain not hosted here), prepared */
    char *secret;                  /* shared secret, read from secret_file or secret_env */
    char *secret_file;
    char *secret_env;
};

/* Global distribution (gd/, issue 13): this data center's part of a service spread over
 * several, joined by their meerkat-gd processes over CURVE links, with a Redis routing table. */
struct cfg_gd_peer {
    char *dc;                      /* the trusted data center's name */
    char *public_key;              /* its CURVE public key, Z85 (40 characters) */
    char *endpoint;                /* tcp://host:port of its link, or NULL: learned from Redis */
};

struct cfg_gd {
    bool enabled;                  /* default false: no gd traffic at all, the router handles misses locally */
    char *dc;                      /* this data center's name ([a-z0-9._-], 1-63 bytes); required when enabled */
    char *link_bind;               /* link.bind: tcp://host:port the inter-DC link listens on; required when enabled */
    char *link_advertise;          /* link.advertise: endpoint published for other DCs, default link_bind
                                    * (required when bind is a wildcard address) */
    char *secret_file;             /* keys.secret_file: this DC's CURVE key pair (0600), made at first start
                                    * when missing; default <data_dir>/gd_curve.key */
    struct cfg_gd_peer *peers;     /* the trusted data centers */
    size_t npeers;
    char *redis_primary_host;      /* redis.primary host:port, default 127.0.0.1:6379: every write */
    int redis_primary_port;
    char *redis_replica_host;      /* redis.replica host:port, default the primary: every read */
    int redis_replica_port;
    char *redis_user;              /* ACL user (AUTH user password), or NULL: AUTH password only / no AUTH */
    char *redis_password;          /* read from password_file or password_env (when enabled), or NULL */
    char *redis_password_file;
    char *redis_password_env;
    char *redis_prefix;            /* every key starts with it, default "meerkat:" */
    unsigned redis_db;             /* SELECT, default 0 */
    unsigned ttl_sec;              /* mapping entries expire unless refreshed, default 120 */
    unsigned refresh_sec;          /* refresh period, default 40 (less than ttl_sec, checked) */
    unsigned refresh_batch;        /* entries per pipelined refresh batch, default 1000 */
    unsigned cache_ttl_ms;         /* lookup cache entry lifetime, default 5000 */
    unsigned cache_max;            /* lookup cache entries, default 100000 */
    unsigned negative_ttl_ms;      /* "no mapping" cache lifetime, default 500 */
    unsigned bounce_base_ms;       /* first re-resolve delay, doubled each time, default 50 */
    unsigned bounce_deadline_ms;   /* give up re-resolving after this, default 5000 */
    unsigned link_queue_max;       /* messages queued per peer DC while its link is down, default 100000 */
    unsigned link_queue_sec;       /* how long a message may wait for a cut link, default 30 */
    unsigned hop_ttl;              /* inter-DC hops a stanza may take, default 4 */
};

struct cfg {
    char *path;                    /* file read, or NULL for the embedded defaults */
    char **domains;                /* hosted domains, prepared (nameprep) */
    size_t ndomains;
    char *log_level;               /* default "info" */
    char *log_file;                /* NULL = stderr */
    char *data_dir;                /* default "./var"; absolute when read from a file (see cfg_load) */
    char *tls_cert;                /* default "<data_dir>/tls/cert.pem", generated by meerkat start when missing */
    char *tls_key;
    bool starttls_required;        /* default true */
    unsigned tls_session_tickets;  /* TLS 1.3 tickets issued per handshake, default 0 */
    struct cfg_listener c2s;       /* STARTTLS listener, default port 5222 */
    struct cfg_listener c2s_tls;   /* direct TLS (XEP-0368), default port 5223 */
    struct cfg_listener c2s_ws;    /* WebSocket (RFC 7395) and XEP-0156 host-meta, default port 0 (off) */
    struct cfg_listener component; /* XEP-0114 external components, default 127.0.0.1:0 (off) */
    struct cfg_component *components;
    size_t ncomponents;
    struct cfg_pusher pusher;
    struct cfg_gd gd;
    struct cfg_storage storage;
    struct cfg_limits limits;
    struct cfg_bus bus;
    struct cfg_modules modules;
    struct cfg_proc *procs;
    size_t nprocs;
    unsigned grace_sec;            /* graceful stop time limit, default 5 */
    /* Where a stopping c2s sends its clients (RFC 6120 4.9.3.19 <see-other-host/>):
     * CFG_SOH_AUTO names the client listener of this cluster when another c2s process is
     * up, CFG_SOH_OFF always says <system-shutdown/>, CFG_SOH_FIXED names see_other_host_addr. */
    enum cfg_see_other_host {
        CFG_SOH_AUTO = 0,
        CFG_SOH_OFF,
        CFG_SOH_FIXED,
    } see_other_host;
    char *see_other_host_addr;     /* "host:port" (IPv6 in brackets) when CFG_SOH_FIXED, else NULL */
    /* What a reload compares (cfg_reload_check): one hash per top-level key of the file
     * but processes, over its YAML value as written. */
    struct cfg_key_print *prints;
    size_t nprints;
    struct cfg_retired *retired;   /* process lists replaced by cfg_adopt_procs, freed with the cfg */
};

struct cfg_key_print {
    char *key;
    uint64_t hash;
};

/* Loads path, or the embedded defaults when path is NULL. Every key is checked:
 * an unknown key, a wrong type, an out-of-range number, a duplicate process id,
 * a missing required part gives NULL and "file:line: reason" in err.
 * Every relative file name in the file (data_dir and the paths derived from it,
 * log.file, tls.cert/key, storage.sqlite.path, storage.pgsql.password_file and
 * sslrootcert, ipc:// bus endpoints) is made absolute against the file's directory
 * as named (symbolic links not followed), so that every process and `meerkat ctl`
 * find the same files from any working directory. With no file they stay relative
 * to the working directory. Borrows path. */
struct cfg *cfg_load(const char *path, char *err, size_t errlen);
/* Same from a string (name is used in error messages); relative paths stay as
 * written, relative to the working directory. Borrows yaml and name. */
struct cfg *cfg_load_string(const char *yaml, size_t len, const char *name, char *err, size_t errlen);
void cfg_free(struct cfg **cp);

/* Whether next (the file loaded again) may replace cur in a running cluster: true (0)
 * when every process of cur is in next with the same bus endpoint and metrics address
 * and every other top-level key of the file is as it was (its YAML value, written the
 * same way); processes may only be added, and only c2s ones. Else -1 and a sentence saying what changed
 * (the keys, or the process) in why. Borrows both. */
int cfg_reload_check(const struct cfg *cur, const struct cfg *next, char *why, size_t whylen);
/* Takes next's process list into cur (after cfg_reload_check said yes): cur's old list
 * stays allocated until cfg_free(cur), so that pointers into it (a process's self, a
 * shard chosen earlier) stay valid, though stale. Fills added (borrowed, into cur's new
 * list) with the processes that are new, up to max; returns how many it filled. next is
 * left without processes (free it). */
size_t cfg_adopt_procs(struct cfg *cur, struct cfg *next, const struct cfg_proc **added, size_t max);

/* The process entry for id, or NULL (borrowed). */
const struct cfg_proc *cfg_find_proc(const struct cfg *c, const char *id);
/* The processes of one role in index order: fills out (borrowed pointers) up to max; returns count. */
size_t cfg_procs_of_role(const struct cfg *c, enum cfg_role role, const struct cfg_proc **out, size_t max);
const char *cfg_role_name(enum cfg_role role);
int cfg_role_parse(const char *s, enum cfg_role *out);
/* True when domain (prepared) is hosted here. */
bool cfg_is_local_domain(const struct cfg *c, const char *domain);
/* Rendezvous hashing: the process of role that owns key (a bare JID), or NULL when the
 * role has no process. Adding a process moves only the keys it now wins. */
const struct cfg_proc *cfg_shard(const struct cfg *c, enum cfg_role role, const char *key);
/* The same for the first klen bytes of key (a full JID's bare part, without a copy). */
const struct cfg_proc *cfg_shard_n(const struct cfg *c, enum cfg_role role, const char *key, size_t klen);
/* The event kinds (CFG_PUSH_BIT mask) some pusher backend wants for domain; 0 when
 * none, or when the cluster has no pusher process (then nothing is emitted). */
uint32_t cfg_push_events(const struct cfg *c, const char *domain);
/* The gd.peers entry for data center dc, or NULL (borrowed). */
const struct cfg_gd_peer *cfg_find_gd_peer(const struct cfg *c, const char *dc);
/* The MUC service domain of hosted domain (modules.muc.host with "@HOST@" replaced by
 * domain), as a new string the caller frees. Borrows both. */
char *cfg_muc_host(const struct cfg *c, const char *domain);
/* The configured component for domain (prepared), or NULL (borrowed). */
const struct cfg_component *cfg_find_component(const struct cfg *c, const char *domain);
#endif
