build-san/obj/common/rchan_set.o: common/rchan_set.c common/rchan_set.h \
 common/bus.h common/bus_keys.h build-san/gen/meerkat.pb-c.h common/cfg.h \
 common/rchan.h common/util.h
common/rchan_set.h:
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/cfg.h:
common/rchan.h:
common/util.h:
