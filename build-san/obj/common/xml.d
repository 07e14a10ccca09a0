build-san/obj/common/xml.o: common/xml.c common/xml.h common/buf.h \
 common/util.h
common/xml.h:
common/buf.h:
common/util.h:
