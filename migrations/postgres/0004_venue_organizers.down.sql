DROP TABLE venue_organizers;
