/** The DevTools page: it only creates the "MoE" panel. */
chrome.devtools.panels.create('MoE', 'icon128.png', 'panel.html');
