// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.content;

public class Intent {
  public static final String ACTION_OPEN_DOCUMENT = "android.intent.action.OPEN_DOCUMENT";
  public static final String CATEGORY_OPENABLE = "android.intent.category.OPENABLE";
  public Intent(String action) { throw new RuntimeException("stub"); }
  public Intent addCategory(String category) { throw new RuntimeException("stub"); }
  public Intent setType(String type) { throw new RuntimeException("stub"); }
  public android.net.Uri getData() { throw new RuntimeException("stub"); }
}
