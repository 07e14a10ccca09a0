build-san/obj/common/sigv4.o: common/sigv4.c common/sigv4.h common/buf.h \
 common/util.h
common/sigv4.h:
common/buf.h:
common/util.h:
