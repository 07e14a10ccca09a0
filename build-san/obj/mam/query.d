build-san/obj/mam/query.o: mam/query.c mam/archive.h common/buf.h \
 build-san/gen/meerkat.pb-c.h common/xml.h common/buf.h common/env.h \
 mam/fence.h common/jid.h common/log.h common/mamid.h common/cfg.h \
 common/node.h common/bus.h common/bus_keys.h common/metrics.h \
 common/proc.h common/store.h common/util.h
mam/archive.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/xml.h:
common/buf.h:
common/env.h:
mam/fence.h:
common/jid.h:
common/log.h:
common/mamid.h:
common/cfg.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/metrics.h:
common/proc.h:
common/store.h:
common/util.h:
