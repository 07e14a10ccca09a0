build-san/obj/router/route.o: router/route.c router/router.h common/buf.h \
 build-san/gen/meerkat.pb-c.h common/util.h common/xml.h common/buf.h
router/router.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/util.h:
common/xml.h:
common/buf.h:
