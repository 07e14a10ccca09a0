build-san/obj/mam/main.o: mam/main.c mam/archive.h common/buf.h \
 build-san/gen/meerkat.pb-c.h common/xml.h common/buf.h common/env.h \
 common/log.h mam/mam.h common/metrics.h common/node.h common/bus.h \
 common/bus_keys.h common/cfg.h common/metrics.h common/proc.h \
 common/rchan.h common/store.h common/util.h
mam/archive.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/xml.h:
common/buf.h:
common/env.h:
common/log.h:
mam/mam.h:
common/metrics.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/metrics.h:
common/proc.h:
common/rchan.h:
common/store.h:
common/util.h:
