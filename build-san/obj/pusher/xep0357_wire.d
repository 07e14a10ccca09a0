build-san/obj/pusher/xep0357_wire.o: pusher/xep0357_wire.c \
 pusher/xep0357_wire.h common/buf.h common/util.h common/xml.h \
 common/buf.h
pusher/xep0357_wire.h:
common/buf.h:
common/util.h:
common/xml.h:
common/buf.h:
