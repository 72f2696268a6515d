// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.os;

public final class Bundle {}
