build-san/obj/pusher/window.o: pusher/window.c pusher/window.h \
 common/util.h
pusher/window.h:
common/util.h:
