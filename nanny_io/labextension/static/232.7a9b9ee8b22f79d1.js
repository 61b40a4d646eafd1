"use strict";(self.rspackChunknanny_io=self.rspackChunknanny_io||[]).push([[232],{475(o,r,a){var e=a(601),t=a.n(e),n=a(314),c=(a.n(n))()(t());c.push([o.id,`/* The Kernel Log panel. Colours come from JupyterLab's theme variables, so light and dark
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
  gap: 8px;
  padding: 0 8px;
  border-left: 4px solid var(--jp-NannyLog-stream-color);
}

.jp-NannyLog-time {
  flex: none;
  color: var(--jp-ui-font-color3);
}

.jp-NannyLog-stream {
  flex: none;
  width: 4.5em;
  color: var(--jp-NannyLog-stream-color);
  font-weight: bold;
}

.jp-NannyLog-text {
  white-space: pre-wrap;
  overflow-wrap: anywhere;
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

.jp-NannyLog-row[data-stream='stderr'] .jp-NannyLog-text {
  color: var(--jp-error-color0);
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
  background: var(--jp-rendermime-error-background, rgba(255, 0, 0, 0.1));
  color: var(--jp-error-color0);
  border-top: 2px solid var(--jp-error-color1);
}

.jp-NannyLog-row[data-marker='restarted'],
.jp-NannyLog-row[data-marker='started'] {
  --jp-NannyLog-stream-color: var(--jp-success-color1);
  background: var(--jp-layout-color2);
  color: var(--jp-success-color0);
}

.jp-NannyLog-row[data-marker='gap'],
.jp-NannyLog-row[data-marker='truncated'],
.jp-NannyLog-row[data-marker='shutdown'],
.jp-NannyLog-row[data-marker='notice'] {
  --jp-NannyLog-stream-color: var(--jp-warn-color1);
  background: var(--jp-layout-color2);
  color: var(--jp-warn-color0);
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
`,""]),a.d(r,{},{A:c})},314(o){o.exports=function(o){var r=[];return r.toString=function(){return this.map(function(r){var a="",e=void 0!==r[5];return r[4]&&(a+="@supports (".concat(r[4],") {")),r[2]&&(a+="@media ".concat(r[2]," {")),e&&(a+="@layer".concat(r[5].length>0?" ".concat(r[5]):""," {")),a+=o(r),e&&(a+="}"),r[2]&&(a+="}"),r[4]&&(a+="}"),a}).join("")},r.i=function(o,a,e,t,n){"string"==typeof o&&(o=[[null,o,void 0]]);var c={};if(e)for(var p=0;p<this.length;p++){var s=this[p][0];null!=s&&(c[s]=!0)}for(var i=0;i<o.length;i++){var l=[].concat(o[i]);e&&c[l[0]]||(void 0!==n&&(void 0===l[5]||(l[1]="@layer".concat(l[5].length>0?" ".concat(l[5]):""," {").concat(l[1],"}")),l[5]=n),a&&(l[2]&&(l[1]="@media ".concat(l[2]," {").concat(l[1],"}")),l[2]=a),t&&(l[4]?(l[1]="@supports (".concat(l[4],") {").concat(l[1],"}"),l[4]=t):l[4]="".concat(t)),r.push(l))}},r}},601(o){o.exports=function(o){return o[1]}},72(o){var r=[];function a(o){for(var a=-1,e=0;e<r.length;e++)if(r[e].identifier===o){a=e;break}return a}function e(o,e){for(var t={},n=[],c=0;c<o.length;c++){var p=o[c],s=e.base?p[0]+e.base:p[0],i=t[s]||0,l="".concat(s," ").concat(i);t[s]=i+1;var d=a(l),u={css:p[1],media:p[2],sourceMap:p[3],supports:p[4],layer:p[5]};if(-1!==d)r[d].references++,r[d].updater(u);else{var f=function(o,r){var a=r.domAPI(r);return a.update(o),function(r){r?(r.css!==o.css||r.media!==o.media||r.sourceMap!==o.sourceMap||r.supports!==o.supports||r.layer!==o.layer)&&a.update(o=r):a.remove()}}(u,e);e.byIndex=c,r.splice(c,0,{identifier:l,updater:f,references:1})}n.push(l)}return n}o.exports=function(o,t){var n=e(o=o||[],t=t||{});return function(o){o=o||[];for(var c=0;c<n.length;c++){var p=a(n[c]);r[p].references--}for(var s=e(o,t),i=0;i<n.length;i++){var l=a(n[i]);0===r[l].references&&(r[l].updater(),r.splice(l,1))}n=s}}},659(o){var r={};o.exports=function(o,a){var e=function(o){if(void 0===r[o]){var a=document.querySelector(o);if(window.HTMLIFrameElement&&a instanceof window.HTMLIFrameElement)try{a=a.contentDocument.head}catch(o){a=null}r[o]=a}return r[o]}(o);if(!e)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");e.appendChild(a)}},540(o){o.exports=function(o){var r=document.createElement("style");return o.setAttributes(r,o.attributes),o.insert(r,o.options),r}},56(o,r,a){o.exports=function(o){var r=a.nc;r&&o.setAttribute("nonce",r)}},825(o){o.exports=function(o){if("u"<typeof document)return{update:function(){},remove:function(){}};var r=o.insertStyleElement(o);return{update:function(a){var e,t,n;e="",a.supports&&(e+="@supports (".concat(a.supports,") {")),a.media&&(e+="@media ".concat(a.media," {")),(t=void 0!==a.layer)&&(e+="@layer".concat(a.layer.length>0?" ".concat(a.layer):""," {")),e+=a.css,t&&(e+="}"),a.media&&(e+="}"),a.supports&&(e+="}"),(n=a.sourceMap)&&"u">typeof btoa&&(e+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(n))))," */")),o.styleTagTransform(e,r,o.options)},remove:function(){var o;null===(o=r).parentNode||o.parentNode.removeChild(o)}}}},113(o){o.exports=function(o,r){if(r.styleSheet)r.styleSheet.cssText=o;else{for(;r.firstChild;)r.removeChild(r.firstChild);r.appendChild(document.createTextNode(o))}}},579(o,r,a){var e=a(72),t=a.n(e),n=a(825),c=a.n(n),p=a(659),s=a.n(p),i=a(56),l=a.n(i),d=a(540),u=a.n(d),f=a(113),g=a.n(f),m=a(475),v={};v.styleTagTransform=g(),v.setAttributes=l(),v.insert=s().bind(null,"head"),v.domAPI=c(),v.insertStyleElement=u(),t()(m.A,v),m.A&&m.A.locals&&m.A.locals}}]);