build-san/obj/common/node.o: common/node.c common/node.h common/bus.h \
 common/bus_keys.h build-san/gen/meerkat.pb-c.h common/cfg.h \
 common/metrics.h common/buf.h common/proc.h common/env.h common/log.h \
 common/util.h
common/node.h:
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/cfg.h:
common/metrics.h:
common/buf.h:
common/proc.h:
common/env.h:
common/log.h:
common/util.h:
