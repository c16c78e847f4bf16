DROP INDEX event_tags_by_event;
