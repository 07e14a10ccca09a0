build-san/obj/c2s/caps.o: c2s/caps.c common/buf.h c2s/caps.h common/xml.h \
 common/buf.h common/scram.h common/util.h
common/buf.h:
c2s/caps.h:
common/xml.h:
common/buf.h:
common/scram.h:
common/util.h:
