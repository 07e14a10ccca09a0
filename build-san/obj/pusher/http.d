build-san/obj/pusher/http.o: pusher/http.c common/buf.h \
 pusher/http_resp.h common/log.h pusher/pusher.h common/cfg.h \
 build-san/gen/meerkat.pb-c.h common/util.h
common/buf.h:
pusher/http_resp.h:
common/log.h:
pusher/pusher.h:
common/cfg.h:
build-san/gen/meerkat.pb-c.h:
common/util.h:
