/* router/muc_state.h - a group chat room's lasting state (configuration, subject, affiliations) and its stored form: one small XML document per persistent room. */
#ifndef MK_ROUTER_MUC_STATE_H
#define MK_ROUTER_MUC_STATE_H
#include <stdbool.h>
#include <stddef.h>

struct buf;

/* The namespace of the stored document's root element, <room/>. */
#define NS_MUC_STATE "urn:meerkat:muc-room:1"

enum muc_aff {
    MUC_AFF_NONE = 0,
    MUC_AFF_OUTCAST,
    MUC_AFF_MEMBER,
    MUC_AFF_ADMIN,
    MUC_AFF_OWNER,
};

/* "none", "outcast", "member", "admin", "owner", indexed by enum muc_aff. */
extern const char *const muc_aff_names[5];

/* What the owner configured (muc#roomconfig); router/muc.c's room_new sets the defaults. */
struct muc_config {
    char *name;                    /* NULL: none */
    char *desc;
    char *password;                /* NULL: not password-protected */
    bool public_room;              /* listed (disco muc_public / muc_hidden); default true */
    bool persistent;               /* kept in the store, survives its last occupant and restarts; default false */
    bool members_only;             /* default false */
    bool moderated;                /* newcomers without affiliation are visitors; default false */
    bool change_subject;           /* participants may set the subject; default true */
    bool allow_invites;            /* occupants (not only admins) may invite; default true */
    bool semi_anonymous;           /* real JIDs only to moderators (whois moderators); default false */
    bool no_archive;               /* muc#roomconfig_enablearchiving off (XEP-0313 room archive, temporary rooms'
                                    * too); default false */
    unsigned max_users;            /* default and most modules.muc.max_occupants */
};

struct muc_aff_entry {
    char *bare;                    /* prepared bare JID */
    enum muc_aff aff;              /* never MUC_AFF_NONE */
    char *nick;                    /* the room nick reserved for bare (XEP-0045 7.10); NULL: none */
};

/* What a persistent room keeps across restarts. Occupants, roles and history are not in
 * it: they live only while the room is in memory. */
struct muc_state {
    char *creator;                 /* bare JID of the user who created the room */
    struct muc_config conf;
    char *subject;                 /* NULL: never set */
    char *subject_nick;            /* who set it; NULL: the room */
    struct muc_aff_entry *affs;
    size_t naffs;
};

/* Appends st's document to out (borrows st):
 *   <room xmlns=NS_MUC_STATE creator='bare'><config public='1' members_only='0' ... [temporary='1']/>
 *   <name>..</name><desc>..</desc><password>..</password><subject nick='..'>..</subject>
 *   <aff jid='bare' affiliation='owner' nick='reserved nick'/>...</room>
 * with the optional parts left out when NULL. muc_state_read gives back what was written. */
void muc_state_write(const struct muc_state *st, struct buf *out);

/* Parses a document of muc_state_write from the store (len bytes at data, borrowed) into
 * *out, which the caller releases with muc_state_release (also after a failure). At most
 * max_affs affiliations; JIDs must be prepared bare JIDs, each affiliated once. Unknown
 * child elements are skipped (a newer writer's additions). A reserved nick (an
 * <aff/>'s nick, never on an outcast) belongs to one JID at most. conf.persistent is set: a
 * stored room is a persistent one unless its <config/> says temporary='1' (the row a
 * temporary room that archives keeps while it lives: its archive needs an owner in the
 * store). Returns 0, or -1 with one sentence in err. */
int muc_state_read(const char *data, size_t len, size_t max_affs, struct muc_state *out, char *err, size_t errlen);

/* Frees what st holds and zeroes it; NULL-safe. */
void muc_state_release(struct muc_state *st);
#endif
