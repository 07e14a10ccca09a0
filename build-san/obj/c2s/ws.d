build-san/obj/c2s/ws.o: c2s/ws.c common/util.h c2s/ws.h common/buf.h \
 common/xml.h common/buf.h
common/util.h:
c2s/ws.h:
common/buf.h:
common/xml.h:
common/buf.h:
