build-san/obj/router/custody.o: router/custody.c common/buf.h \
 router/custody.h build-san/gen/meerkat.pb-c.h common/env.h common/buf.h \
 common/util.h
common/buf.h:
router/custody.h:
build-san/gen/meerkat.pb-c.h:
common/env.h:
common/buf.h:
common/util.h:
