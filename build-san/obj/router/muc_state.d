build-san/obj/router/muc_state.o: router/muc_state.c router/muc_state.h \
 common/buf.h common/jid.h common/util.h common/xml.h common/buf.h
router/muc_state.h:
common/buf.h:
common/jid.h:
common/util.h:
common/xml.h:
common/buf.h:
