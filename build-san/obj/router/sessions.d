build-san/obj/router/sessions.o: router/sessions.c router/router.h \
 common/buf.h build-san/gen/meerkat.pb-c.h common/util.h
router/router.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/util.h:
