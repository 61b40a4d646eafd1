"use strict";(self.rspackChunknanny_io=self.rspackChunknanny_io||[]).push([[232],{475(o,r,e){var t=e(601),a=e.n(t),n=e(314),i=(e.n(n))()(a());i.push([o.id,`/* The Kernel Log panel. Colours come from JupyterLab's theme variables, so light and dark
   themes both work; the stream colours are the theme's own (error, warn, info, success). */

.jp-NannyLog {
  display: flex;
  flex-direction: column;
  background: var(--jp-layout-color0);
  color: var(--jp-content-font-color1);
  font-size: var(--jp-code-font-size);
  min-width: 200px;
  min-height: 100px;
}

.jp-NannyLog-toolbar {
  display: flex;
  flex-wrap: wrap;
  align-items: center;
  gap: 8px;
  padding: 4px 8px;
  border-bottom: var(--jp-border-width) solid var(--jp-toolbar-border-color);
  background: var(--jp-toolbar-background);
  font-family: var(--jp-ui-font-family);
  font-size: var(--jp-ui-font-size1);
}

.jp-NannyLog-toggle {
  display: inline-flex;
  align-items: center;
  gap: 2px;
  padding: 0 6px 0 2px;
  border-radius: 3px;
  border-left: 4px solid var(--jp-NannyLog-stream-color);
  cursor: pointer;
}

.jp-NannyLog-search {
  width: 14em;
}

.jp-NannyLog-count,
.jp-NannyLog-status {
  color: var(--jp-ui-font-color2);
}

.jp-NannyLog-status {
  margin-left: auto;
}

.jp-NannyLog-status[data-state='reconnecting'],
.jp-NannyLog-status[data-state='ended'] {
  color: var(--jp-warn-color0);
  font-weight: bold;
}

.jp-NannyLog-status[data-state='live']::before {
  content: '● ';
  color: var(--jp-success-color1);
}

.jp-NannyLog-button {
  padding: 0 8px;
  height: 24px;
  background: var(--jp-layout-color2);
  color: var(--jp-ui-font-color1);
  cursor: pointer;
}

.jp-NannyLog-body {
  flex: 1 1 auto;
  overflow: auto;
  font-family: var(--jp-code-font-family);
  line-height: 1.4;
  contain: strict;
}

.jp-NannyLog-elided {
  padding: 2px 8px;
  color: var(--jp-ui-font-color2);
  font-style: italic;
  border-bottom: 1px dashed var(--jp-border-color2);
}

.jp-NannyLog-row {
  display: flex;
  padding: 0 8px;
  border-left: 4px solid var(--jp-NannyLog-stream-color);
  /* Rows out of view are neither laid out nor painted. */
  content-visibility: auto;
  contain-intrinsic-size: auto 1.4em;
}

/* The time, then the stream's name (generated content: fewer elements per row). */
.jp-NannyLog-row::before {
  content: attr(data-time);
  flex: none;
  width: 7.5em;
  color: var(--jp-ui-font-color2);
}

.jp-NannyLog-text {
  flex: 1 1 auto;
  min-width: 0;
  white-space: pre-wrap;
  overflow-wrap: anywhere;
  /* A hanging indent: wrapped lines start under the text, not under the stream name. */
  padding-left: 5em;
  text-indent: -5em;
}

.jp-NannyLog-text::before {
  content: attr(data-label);
  display: inline-block;
  width: 5em;
  text-indent: 0;
  color: var(--jp-NannyLog-stream-color);
  font-weight: bold;
}

.jp-NannyLog-text mark {
  background: var(--jp-search-selected-match-background-color, #ff0);
  color: var(--jp-search-selected-match-color, inherit);
}

/* Stream colours (the row's left edge, the stream name, the filter toggle). */
[data-stream='stdout'] {
  --jp-NannyLog-stream-color: var(--jp-info-color1);
}

[data-stream='stderr'] {
  --jp-NannyLog-stream-color: var(--jp-error-color1);
}

[data-stream='log'] {
  --jp-NannyLog-stream-color: var(--jp-warn-color1);
}

[data-stream='nanny'],
[data-stream='marker'] {
  --jp-NannyLog-stream-color: var(--jp-ui-font-color3);
}

/* Text is in the theme's font colours (readable in light and dark themes); the stream's
   colour marks the row's edge and name, and stderr rows are tinted as Lab tints stderr. */
.jp-NannyLog-row[data-stream='stderr'] {
  background: var(--jp-rendermime-error-background);
}

/* Markers: deaths, restarts, gaps. */
.jp-NannyLog-row[data-marker] {
  margin: 2px 0;
  padding-top: 2px;
  padding-bottom: 2px;
  font-family: var(--jp-ui-font-family);
  font-weight: bold;
}

.jp-NannyLog-row[data-marker='died'] {
  --jp-NannyLog-stream-color: var(--jp-error-color0);
  background: var(--jp-rendermime-error-background);
  color: var(--jp-content-font-color0);
  border-top: 2px solid var(--jp-error-color1);
}

.jp-NannyLog-row[data-marker='restarted'],
.jp-NannyLog-row[data-marker='started'] {
  --jp-NannyLog-stream-color: var(--jp-success-color1);
  background: var(--jp-layout-color2);
  color: var(--jp-content-font-color0);
}

.jp-NannyLog-row[data-marker='gap'],
.jp-NannyLog-row[data-marker='truncated'],
.jp-NannyLog-row[data-marker='shutdown'],
.jp-NannyLog-row[data-marker='notice'] {
  --jp-NannyLog-stream-color: var(--jp-warn-color1);
  background: var(--jp-layout-color2);
  color: var(--jp-content-font-color0);
  font-style: italic;
}

.jp-NannyLog-row.jp-mod-revealed {
  outline: 2px solid var(--jp-brand-color1);
  outline-offset: -2px;
}

.jp-NannyLog-resume {
  position: absolute;
  right: 24px;
  bottom: 16px;
  background: var(--jp-brand-color1);
  color: var(--jp-ui-inverse-font-color1);
  border-radius: 12px;
  box-shadow: var(--jp-elevation-z4);
}
`,""]),e.d(r,{},{A:i})},314(o){o.exports=function(o){var r=[];return r.toString=function(){return this.map(function(r){var e="",t=void 0!==r[5];return r[4]&&(e+="@supports (".concat(r[4],") {")),r[2]&&(e+="@media ".concat(r[2]," {")),t&&(e+="@layer".concat(r[5].length>0?" ".concat(r[5]):""," {")),e+=o(r),t&&(e+="}"),r[2]&&(e+="}"),r[4]&&(e+="}"),e}).join("")},r.i=function(o,e,t,a,n){"string"==typeof o&&(o=[[null,o,void 0]]);var i={};if(t)for(var s=0;s<this.length;s++){var c=this[s][0];null!=c&&(i[c]=!0)}for(var p=0;p<o.length;p++){var l=[].concat(o[p]);t&&i[l[0]]||(void 0!==n&&(void 0===l[5]||(l[1]="@layer".concat(l[5].length>0?" ".concat(l[5]):""," {").concat(l[1],"}")),l[5]=n),e&&(l[2]&&(l[1]="@media ".concat(l[2]," {").concat(l[1],"}")),l[2]=e),a&&(l[4]?(l[1]="@supports (".concat(l[4],") {").concat(l[1],"}"),l[4]=a):l[4]="".concat(a)),r.push(l))}},r}},601(o){o.exports=function(o){return o[1]}},72(o){var r=[];function e(o){for(var e=-1,t=0;t<r.length;t++)if(r[t].identifier===o){e=t;break}return e}function t(o,t){for(var a={},n=[],i=0;i<o.length;i++){var s=o[i],c=t.base?s[0]+t.base:s[0],p=a[c]||0,l="".concat(c," ").concat(p);a[c]=p+1;var d=e(l),u={css:s[1],media:s[2],sourceMap:s[3],supports:s[4],layer:s[5]};if(-1!==d)r[d].references++,r[d].updater(u);else{var f=function(o,r){var e=r.domAPI(r);return e.update(o),function(r){r?(r.css!==o.css||r.media!==o.media||r.sourceMap!==o.sourceMap||r.supports!==o.supports||r.layer!==o.layer)&&e.update(o=r):e.remove()}}(u,t);t.byIndex=i,r.splice(i,0,{identifier:l,updater:f,references:1})}n.push(l)}return n}o.exports=function(o,a){var n=t(o=o||[],a=a||{});return function(o){o=o||[];for(var i=0;i<n.length;i++){var s=e(n[i]);r[s].references--}for(var c=t(o,a),p=0;p<n.length;p++){var l=e(n[p]);0===r[l].references&&(r[l].updater(),r.splice(l,1))}n=c}}},659(o){var r={};o.exports=function(o,e){var t=function(o){if(void 0===r[o]){var e=document.querySelector(o);if(window.HTMLIFrameElement&&e instanceof window.HTMLIFrameElement)try{e=e.contentDocument.head}catch(o){e=null}r[o]=e}return r[o]}(o);if(!t)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");t.appendChild(e)}},540(o){o.exports=function(o){var r=document.createElement("style");return o.setAttributes(r,o.attributes),o.insert(r,o.options),r}},56(o,r,e){o.exports=function(o){var r=e.nc;r&&o.setAttribute("nonce",r)}},825(o){o.exports=function(o){if("u"<typeof document)return{update:function(){},remove:function(){}};var r=o.insertStyleElement(o);return{update:function(e){var t,a,n;t="",e.supports&&(t+="@supports (".concat(e.supports,") {")),e.media&&(t+="@media ".concat(e.media," {")),(a=void 0!==e.layer)&&(t+="@layer".concat(e.layer.length>0?" ".concat(e.layer):""," {")),t+=e.css,a&&(t+="}"),e.media&&(t+="}"),e.supports&&(t+="}"),(n=e.sourceMap)&&"u">typeof btoa&&(t+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(n))))," */")),o.styleTagTransform(t,r,o.options)},remove:function(){var o;null===(o=r).parentNode||o.parentNode.removeChild(o)}}}},113(o){o.exports=function(o,r){if(r.styleSheet)r.styleSheet.cssText=o;else{for(;r.firstChild;)r.removeChild(r.firstChild);r.appendChild(document.createTextNode(o))}}},579(o,r,e){var t=e(72),a=e.n(t),n=e(825),i=e.n(n),s=e(659),c=e.n(s),p=e(56),l=e.n(p),d=e(540),u=e.n(d),f=e(113),m=e.n(f),g=e(475),v={};v.styleTagTransform=m(),v.setAttributes=l(),v.insert=c().bind(null,"head"),v.domAPI=i(),v.insertStyleElement=u(),a()(g.A,v),g.A&&g.A.locals&&g.A.locals}}]);