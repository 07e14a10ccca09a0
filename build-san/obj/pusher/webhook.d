build-san/obj/pusher/webhook.o: pusher/webhook.c common/buf.h \
 common/log.h common/mamid.h common/cfg.h pusher/pusher.h common/cfg.h \
 build-san/gen/meerkat.pb-c.h common/util.h pusher/webhook.h
common/buf.h:
common/log.h:
common/mamid.h:
common/cfg.h:
pusher/pusher.h:
common/cfg.h:
build-san/gen/meerkat.pb-c.h:
common/util.h:
pusher/webhook.h:
