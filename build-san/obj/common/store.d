build-san/obj/common/store.o: common/store.c common/store.h common/cfg.h \
 common/log.h common/store_impl.h common/util.h
common/store.h:
common/cfg.h:
common/log.h:
common/store_impl.h:
common/util.h:
