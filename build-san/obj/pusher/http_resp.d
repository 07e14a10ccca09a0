build-san/obj/pusher/http_resp.o: pusher/http_resp.c pusher/http_resp.h \
 common/buf.h
pusher/http_resp.h:
common/buf.h:
