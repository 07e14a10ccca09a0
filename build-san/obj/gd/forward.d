build-san/obj/gd/forward.o: gd/forward.c common/cfg.h common/env.h \
 common/buf.h build-san/gen/meerkat.pb-c.h gd/gd.h gd/link.h \
 common/bus_keys.h common/metrics.h common/log.h common/node.h \
 common/bus.h common/bus_keys.h common/cfg.h common/metrics.h \
 common/proc.h common/rchan.h common/rchan_set.h common/rchan.h \
 gd/table.h common/util.h
common/cfg.h:
common/env.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
gd/gd.h:
gd/link.h:
common/bus_keys.h:
common/metrics.h:
common/log.h:
common/node.h:
common/bus.h:
common/bus_keys.h:
common/cfg.h:
common/metrics.h:
common/proc.h:
common/rchan.h:
common/rchan_set.h:
common/rchan.h:
gd/table.h:
common/util.h:
