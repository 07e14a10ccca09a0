/* tests/fuzz/fuzz_caps.c - libFuzzer target for c2s/caps.c: any disco#info answer a client sends is hashed or refused with a reason, the same whatever the order of its children, and a presence's <c/> is read without a fault. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../c2s/caps.h"
#include "xml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[160];
    struct xml_node *n = xml_parse_document((const char *)data, size, err, sizeof err);
    if (!n)
        return 0;
    char ver[CAPS_VER_MAX], again[CAPS_VER_MAX], e1[96] = "", e2[96] = "";
    int rc = caps_ver(n, ver, sizeof ver, e1, sizeof e1);
    if (rc == -1 && e1[0] == '\0')
        abort();   /* every refusal says why */
    if (rc == 0 && strlen(ver) != CAPS_VER_MAX - 1)
        abort();
    /* The children reversed: the same answer. */
    struct xml_node *rev = NULL, *next;
    for (struct xml_node *c = n->first_child; c; c = next) {
        next = c->next;
        c->next = rev;
        rev = c;
    }
    struct xml_node *last = n->first_child;
    n->first_child = rev;
    n->last_child = last;
    int rc2 = caps_ver(n, again, sizeof again, e2, sizeof e2);
    if (rc != rc2 || (rc == 0 && strcmp(ver, again) != 0))
        abort();
    if (rc == 0 && !caps_verify(n, ver))
        abort();
    const char *node, *v;
    if (caps_of_presence(n, &node, &v) && (strlen(v) != CAPS_VER_MAX - 1 || !*node))
        abort();
    xml_free(&n);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif
