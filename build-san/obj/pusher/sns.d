build-san/obj/pusher/sns.o: pusher/sns.c common/log.h pusher/pusher.h \
 common/cfg.h build-san/gen/meerkat.pb-c.h pusher/sns_wire.h common/buf.h \
 common/util.h
common/log.h:
pusher/pusher.h:
common/cfg.h:
build-san/gen/meerkat.pb-c.h:
pusher/sns_wire.h:
common/buf.h:
common/util.h:
