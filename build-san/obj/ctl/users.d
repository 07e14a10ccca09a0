build-san/obj/ctl/users.o: ctl/users.c common/bus.h common/bus_keys.h \
 build-san/gen/meerkat.pb-c.h common/cfg.h ctl/ctl.h common/env.h \
 common/buf.h common/jid.h common/scram.h common/store.h common/cfg.h \
 common/util.h
common/bus.h:
common/bus_keys.h:
build-san/gen/meerkat.pb-c.h:
common/cfg.h:
ctl/ctl.h:
common/env.h:
common/buf.h:
common/jid.h:
common/scram.h:
common/store.h:
common/cfg.h:
common/util.h:
