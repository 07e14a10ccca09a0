build-san/obj/mam/prefs.o: mam/prefs.c mam/archive.h common/buf.h \
 build-san/gen/meerkat.pb-c.h common/xml.h common/buf.h common/jid.h \
 common/log.h common/store.h common/cfg.h common/util.h
mam/archive.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/xml.h:
common/buf.h:
common/jid.h:
common/log.h:
common/store.h:
common/cfg.h:
common/util.h:
