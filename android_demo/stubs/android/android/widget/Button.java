// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.widget;

public class Button extends TextView {}
