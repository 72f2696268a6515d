// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.app;

public class Activity extends android.content.Context {
  public static final int RESULT_OK = -1;
  protected void onCreate(android.os.Bundle savedInstanceState) { throw new RuntimeException("stub"); }
  protected void onDestroy() { throw new RuntimeException("stub"); }
  protected void onActivityResult(int requestCode, int resultCode, android.content.Intent data) { throw new RuntimeException("stub"); }
  public void setContentView(int layoutResID) { throw new RuntimeException("stub"); }
  public <T extends android.view.View> T findViewById(int id) { throw new RuntimeException("stub"); }
  public void startActivityForResult(android.content.Intent intent, int requestCode) { throw new RuntimeException("stub"); }
}
