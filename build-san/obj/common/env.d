build-san/obj/common/env.o: common/env.c common/env.h common/buf.h \
 build-san/gen/meerkat.pb-c.h common/xml.h
common/env.h:
common/buf.h:
build-san/gen/meerkat.pb-c.h:
common/xml.h:
