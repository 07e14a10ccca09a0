build-san/obj/pusher/sns_wire.o: pusher/sns_wire.c pusher/sns_wire.h \
 common/buf.h common/cfg.h build-san/gen/meerkat.pb-c.h common/sigv4.h \
 common/buf.h common/util.h common/xml.h
pusher/sns_wire.h:
common/buf.h:
common/cfg.h:
build-san/gen/meerkat.pb-c.h:
common/sigv4.h:
common/buf.h:
common/util.h:
common/xml.h:
